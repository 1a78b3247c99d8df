// Package netns runs test code inside a named network namespace (one `ip netns add`
// made): sockets created there stay in it, and processes started there (os/exec forks the
// calling thread) run in it.
package netns

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Do runs fn on a thread that has entered network namespace name (/var/run/netns/name)
// and returns when fn does. The thread leaves the namespace afterwards; if it cannot, it
// stays locked and dies with its goroutine, so no other goroutine runs in the namespace.
func Do(t testing.TB, name string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			t.Errorf("opening own netns: %v", err)
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + name)
		if err != nil {
			t.Errorf("opening netns %s: %v", name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			t.Errorf("entering netns %s: %v", name, err)
			return
		}
		fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
}
