package httpproxy

import "time"

// SetHostSweep shortens how often the event loops look for hosts that left their
// clusters; the returned func restores it.
func SetHostSweep(d time.Duration) func() {
	old := hostSweep
	hostSweep = d
	return func() { hostSweep = old }
}
