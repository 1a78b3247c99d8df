package httpproxy

import "time"

// SetHostSweep shortens how often the event loops look for hosts that left their
// clusters; the returned func restores it.
func SetHostSweep(d time.Duration) func() {
	old := hostSweep
	hostSweep = d
	return func() { hostSweep = old }
}

// SetHeadBudget sets the budget for large request-head buffers; the returned func
// restores it.
func SetHeadBudget(n int64) func() {
	old := headBudget.limit.Swap(n)
	return func() { headBudget.limit.Store(old) }
}

// HeadBudgetUsed is how much of the budget connections hold now.
func HeadBudgetUsed() int64 { return headBudget.used.Load() }
