package evloop

import (
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recorder is a Handler that reports what it is called with.
type recorder struct {
	l      *Loop
	events chan uint32
	ticks  chan time.Time
	wakes  chan struct{}
	mu     sync.Mutex
	arm    int64 // Wake arms this (Arm is for the loop's goroutine only)
	rearm  int64 // Tick arms this once if set
}

func (r *recorder) Event(fd int, ev uint32) {
	var b [64]byte
	_, _ = unix.Read(fd, b[:])
	r.events <- ev
}

func (r *recorder) Tick(now time.Time) {
	r.ticks <- now
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rearm != 0 {
		r.l.Arm(r.rearm)
		r.rearm = 0
	}
}

func (r *recorder) Wake() {
	r.mu.Lock()
	if r.arm != 0 {
		r.l.Arm(r.arm)
		r.arm = 0
	}
	r.mu.Unlock()
	r.wakes <- struct{}{}
}
func (r *recorder) Flush() {}

func start(t *testing.T) (*recorder, chan error) {
	t.Helper()
	r := &recorder{events: make(chan uint32, 16), ticks: make(chan time.Time, 16), wakes: make(chan struct{}, 16)}
	l, err := New(r)
	if err != nil {
		t.Fatal(err)
	}
	r.l = l
	done := make(chan error, 1)
	go func() { done <- l.Run() }()
	t.Cleanup(func() {
		l.Stop()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after Stop")
		}
	})
	return r, done
}

func wait[T any](t *testing.T, ch chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s within 5s", what)
	}
	var zero T
	return zero
}

func TestEventsFromARegisteredSocket(t *testing.T) {
	r, _ := start(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	// Run is parked in the runtime's poller by now or soon; registering and writing from
	// this goroutine must wake it.
	if err := r.l.Add(fds[0]); err != nil {
		t.Fatal(err)
	}
	if ev := wait(t, r.events, "initial writable event"); ev&unix.EPOLLOUT == 0 {
		t.Fatalf("first event %#x, want EPOLLOUT (a new socket can be written)", ev)
	}
	for i := range 3 {
		if _, err := unix.Write(fds[1], []byte("x")); err != nil {
			t.Fatal(err)
		}
		if ev := wait(t, r.events, "readable event"); ev&unix.EPOLLIN == 0 {
			t.Fatalf("write %d: event %#x, want EPOLLIN", i, ev)
		}
	}
	unix.Close(fds[1])
	if ev := wait(t, r.events, "hang-up event"); ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) == 0 {
		t.Fatalf("after the peer closed: event %#x, want RDHUP or HUP", ev)
	}
}

func TestArmTicksAtTheEarliestDeadline(t *testing.T) {
	r, _ := start(t)
	begin := time.Now()
	r.mu.Lock()
	r.arm = begin.Add(30 * time.Millisecond).UnixNano()
	r.rearm = begin.Add(80 * time.Millisecond).UnixNano() // Tick asks for a second one
	r.mu.Unlock()
	r.l.Wake()
	wait(t, r.wakes, "wake")
	first := wait(t, r.ticks, "first tick")
	if d := first.Sub(begin); d < 30*time.Millisecond {
		t.Fatalf("first tick after %v, before its 30ms deadline", d)
	}
	second := wait(t, r.ticks, "re-armed tick")
	if d := second.Sub(begin); d < 80*time.Millisecond {
		t.Fatalf("re-armed tick after %v, before its 80ms deadline", d)
	}
	select {
	case extra := <-r.ticks:
		t.Fatalf("a tick at %v with nothing armed", extra.Sub(begin))
	case <-time.After(150 * time.Millisecond):
	}
}

func TestWakeAndStop(t *testing.T) {
	r, done := start(t)
	for range 3 {
		r.l.Wake()
		wait(t, r.wakes, "wake")
	}
	r.l.Stop()
	if err := wait(t, done, "Run to return"); err != nil {
		t.Fatalf("Run after Stop: %v", err)
	}
	done <- nil // for the cleanup
}
