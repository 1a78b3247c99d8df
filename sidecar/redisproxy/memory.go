package redisproxy

import (
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// maxRetained is the most capacity a buffer that is reused from command to
// command keeps after use (request and reply copies, write buffers); a
// larger one, grown for a large value, is dropped so its memory goes back
// to the heap (resp.MaxRetained is the same bound for read buffers).
const maxRetained = resp.MaxRetained

// Dropping a large buffer frees heap, but Go hands freed memory back to the
// OS only after a garbage collection, and an idle proxy allocates nothing
// that would start one (the runtime forces one every two minutes). So when
// a buffer of at least scavengeMin bytes is dropped, the proxy collects and
// returns free memory scavengeAfter later, at most once per scavengeAfter:
// RSS comes back within seconds of a burst of large values, and workloads
// of small values never pay for it.
const (
	scavengeMin   = 1 << 20
	scavengeAfter = time.Second
)

var scavengeArmed atomic.Bool

// scheduleScavenge arranges one debug.FreeOSMemory soon, unless one is
// pending.
func scheduleScavenge() {
	if scavengeArmed.CompareAndSwap(false, true) {
		time.AfterFunc(scavengeAfter, func() {
			scavengeArmed.Store(false)
			debug.FreeOSMemory()
		})
	}
}

// retain returns b emptied for reuse, or nil when it is larger than
// maxRetained (scheduling a scavenge when it was large).
func retain(b []byte) []byte {
	if cap(b) > maxRetained {
		if cap(b) >= scavengeMin {
			scheduleScavenge()
		}
		return nil
	}
	return b[:0]
}
