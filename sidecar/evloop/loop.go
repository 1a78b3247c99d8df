// Package evloop runs many non-blocking sockets from one goroutine, as haproxy and Envoy
// run theirs from one thread: an epoll instance of its own, edge-triggered, whose
// descriptor is itself registered in Go's network poller. With nothing to do the
// goroutine parks in the runtime like any other, so the rest of the process (xDS client,
// admin server, goroutine-per-connection paths) keeps running on the same single thread
// (GOMAXPROCS=1); with work to do, one epoll_wait returns every ready socket at once and
// each is handled without waking a goroutine.
//
// Measured on the HTTP proxy (BENCHMARKS.md): a goroutine per connection spent about a
// fifth of its CPU parking and waking goroutines and in the runtime's poller; a loop
// pays one epoll_wait per batch of events instead.
package evloop

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Handler receives a loop's events. All of its methods run on the loop's goroutine.
type Handler interface {
	// Event reports readiness of fd: a mask of unix.EPOLLIN, EPOLLOUT, EPOLLRDHUP,
	// EPOLLHUP and EPOLLERR. Registration is edge-triggered: an event says the state
	// changed, so the handler must remember a socket stays readable until a read comes
	// back short or with EAGAIN.
	Event(fd int, events uint32)
	// Tick runs when the earliest deadline passed to Loop.Arm is reached (or later).
	Tick(now time.Time)
	// Wake runs after Loop.Wake was called from any goroutine.
	Wake()
	// Flush runs after each batch of events (and after Tick and Wake): output queued
	// while handling the batch is written here, so the reads of a batch all happen
	// before its writes wake the peers, as haproxy orders them.
	Flush()
}

// Loop is one epoll instance and the goroutine that serves it (Run).
type Loop struct {
	epfd   int
	wakefd int
	file   *os.File
	rc     syscall.RawConn
	h      Handler
	events []unix.EpollEvent
	armed  int64 // unix nanos of the earliest deadline asked for; 0: none
	now    time.Time
	err    syscall.Errno
	woken  atomic.Bool
	stop   atomic.Bool
	// wakeMu orders Wake's write with Run closing wakefd: a Wake after Run returned must
	// not write to a descriptor number the process may have reused.
	wakeMu     sync.Mutex
	wakeClosed bool
	batch      int
	poll       func(uintptr) bool
}

// New creates a loop that reports to h.
func New(h Handler) (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &Loop{epfd: epfd, wakefd: wakefd, h: h, events: make([]unix.EpollEvent, 128)}
	err = l.Add(wakefd)
	if err == nil {
		err = unix.SetNonblock(epfd, true)
	}
	if err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	// A non-blocking descriptor handed to os.NewFile joins the runtime's poller: the
	// epoll descriptor is readable whenever one of its sockets has an event.
	l.file = os.NewFile(uintptr(epfd), "epoll")
	if l.rc, err = l.file.SyscallConn(); err != nil {
		l.file.Close()
		unix.Close(wakefd)
		return nil, err
	}
	l.poll = l.pollOnce
	return l, nil
}

// Add registers fd for input, output and hang-up events, edge-triggered.
func (l *Loop) Add(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add %d: %w", fd, err)
	}
	return nil
}

// AddListener registers a listening socket for input, level-triggered: accepting fewer
// connections than are queued (to stay fair to the rest of the batch) loses nothing.
// Several loops may share one listening socket: each new connection wakes one of them
// (EPOLLEXCLUSIVE), not all.
func (l *Loop) AddListener(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add %d: %w", fd, err)
	}
	return nil
}

// Remove unregisters fd (before it is handed to other code; a closed descriptor leaves
// the set by itself).
func (l *Loop) Remove(fd int) {
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// Arm asks for a Tick at or after t (unix nanos). Only a deadline earlier than the one
// already armed costs a runtime timer update; Tick must re-arm for what remains.
func (l *Loop) Arm(t int64) {
	if l.armed != 0 && l.armed <= t {
		return
	}
	l.armed = t
	_ = l.file.SetReadDeadline(time.Unix(0, t))
}

// Now is the time the current batch of events began: what a handler uses for deadlines
// and latencies, instead of reading the clock several times per request (as Envoy's
// dispatchers cache their time per loop iteration). Loop goroutine only.
func (l *Loop) Now() time.Time { return l.now }

// Wake makes the loop call Handler.Wake soon; safe from any goroutine.
func (l *Loop) Wake() {
	if l.woken.Swap(true) {
		return
	}
	one := uint64(1)
	l.wakeMu.Lock()
	if !l.wakeClosed {
		_, _ = unix.Write(l.wakefd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
	l.wakeMu.Unlock()
}

// Stop makes Run return after the batch in progress; safe from any goroutine. The
// sockets still registered are the handler's to close.
func (l *Loop) Stop() {
	l.stop.Store(true)
	l.Wake()
}

// Run serves events until Stop. It closes the epoll instance when it returns.
func (l *Loop) Run() error {
	defer func() {
		l.file.Close()
		l.wakeMu.Lock()
		l.wakeClosed = true
		unix.Close(l.wakefd)
		l.wakeMu.Unlock()
	}()
	for !l.stop.Load() {
		err := l.rc.Read(l.poll)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The runtime converts the deadline from wall time to its monotonic clock, so
			// it may fire a little before the wall-clock deadline: Tick's promise is "at or
			// after", so a deadline not yet reached is set again.
			if now := time.Now().UnixNano(); l.armed != 0 && now < l.armed {
				_ = l.file.SetReadDeadline(time.Unix(0, l.armed))
				continue
			}
			l.tick()
		case err != nil:
			return err
		case l.err != 0:
			return fmt.Errorf("epoll_wait: %w", l.err)
		default:
			// pollOnce returned to let other goroutines run after a long busy stretch.
			runtime.Gosched()
		}
	}
	return nil
}

func (l *Loop) tick() {
	l.armed = 0
	l.now = time.Now()
	l.h.Tick(l.now)
	l.h.Flush()
	if l.armed == 0 {
		_ = l.file.SetReadDeadline(time.Time{})
	}
}

// pollOnce is the body of the loop, run inside one RawConn.Read so that the runtime
// parks the goroutine only when epoll_wait finds nothing (it returns false) and the
// readiness edge cannot be lost between the empty epoll_wait and the park.
func (l *Loop) pollOnce(uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])),
			uintptr(len(l.events)), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			l.err = e
			return true
		}
		if n == 0 {
			l.batch = 0
			return l.stop.Load()
		}
		l.now = time.Now()
		for i := range l.events[:n] {
			ev := &l.events[i]
			if int(ev.Fd) == l.wakefd {
				var b [8]byte
				_, _ = unix.Read(l.wakefd, b[:])
				l.woken.Store(false)
				l.h.Wake()
				l.h.Flush()
				continue
			}
			l.h.Event(int(ev.Fd), ev.Events)
		}
		l.h.Flush()
		if l.stop.Load() {
			return true
		}
		// A loop that never runs dry would never see its timer fire in the runtime's
		// poller: check deadlines here too.
		if l.armed != 0 && l.now.UnixNano() >= l.armed {
			l.tick()
		}
		if l.batch++; l.batch >= 64 {
			l.batch = 0
			return true // let the rest of the process run (Run yields)
		}
	}
}
