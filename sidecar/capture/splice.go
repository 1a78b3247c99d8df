package capture

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// spliceBytes is the size of the pipe one direction of a proxied TCP connection splices
// through: at most this much of the stream sits in the kernel between the two sockets.
// 1 MiB is Linux's default /proc/sys/fs/pipe-max-size, and what Go's own splice uses.
// Each direction holds one pipe (two descriptors) for the connection's life; its pages
// are allocated as they fill, so an idle connection costs the descriptors only.
const spliceBytes = 1 << 20

// splicer moves one direction of a TCP connection socket → pipe → socket without copying
// through user space, as io.Copy between two *net.TCPConn does, with two differences
// that matter on a bulk transfer:
//   - the splice(2) calls skip the runtime's syscall bracket (they are non-blocking: the
//     sockets are the poller's and the pipe is O_NONBLOCK), so a long splice on a
//     one-thread sidecar does not make the runtime hand its processor to another thread
//     (see sidecar/connio/syscalls.go for the cost measured on the Redis proxy);
//   - the pipe is the connection's own, kept between reads, instead of one taken from and
//     returned to the runtime's pool per io.Copy call.
type splicer struct {
	src, dst syscall.RawConn
	pr, pw   int // the pipe's read and write ends
	inPipe   int // bytes spliced in and not yet out
	n        int
	errno    syscall.Errno
	eof      bool
	fill     func(fd uintptr) bool
	drain    func(fd uintptr) bool
}

// newSplicer returns nil when either connection has no descriptor or no pipe can be
// had; the caller then copies with io.Copy.
func newSplicer(dst, src net.Conn) *splicer {
	sd, ok1 := dst.(*net.TCPConn)
	ss, ok2 := src.(*net.TCPConn)
	if !ok1 || !ok2 {
		return nil
	}
	rd, err1 := sd.SyscallConn()
	rs, err2 := ss.SyscallConn()
	if err1 != nil || err2 != nil {
		return nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil
	}
	_, _ = unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, spliceBytes) // a smaller pipe still works
	s := &splicer{src: rs, dst: rd, pr: p[0], pw: p[1]}
	s.fill, s.drain = s.fillFD, s.drainFD
	return s
}

func (s *splicer) close() {
	unix.Close(s.pr)
	unix.Close(s.pw)
}

func rawSplice(in, out, n int) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// fillFD splices what the source socket holds into the (empty) pipe; false waits for more.
func (s *splicer) fillFD(fd uintptr) bool {
	s.n, s.errno = rawSplice(int(fd), s.pw, spliceBytes)
	switch {
	case s.errno == syscall.EAGAIN:
		return false
	case s.errno == 0 && s.n == 0:
		s.eof = true
	}
	return true
}

// drainFD splices the pipe into the destination socket; false waits for room.
func (s *splicer) drainFD(fd uintptr) bool {
	for s.inPipe > 0 {
		n, e := rawSplice(s.pr, int(fd), s.inPipe)
		switch e {
		case 0:
			s.inPipe -= n
			s.n += n
		case syscall.EAGAIN:
			return false
		default:
			s.errno = e
			return true
		}
	}
	return true
}

// step moves what has arrived on the source (waiting for it up to the source's read
// deadline) to the destination. It returns the bytes moved; eof once the source ended.
// A deadline or a closed connection comes back as the poller's error
// (os.ErrDeadlineExceeded, net.ErrClosed); the pipe is empty then, as it is between steps.
func (s *splicer) step() (moved int, eof bool, err error) {
	s.n, s.errno = 0, 0
	if err := s.src.Read(s.fill); err != nil {
		return 0, false, err
	}
	if s.errno != 0 {
		return 0, false, &net.OpError{Op: "splice", Net: "tcp", Err: os.NewSyscallError("splice", s.errno)}
	}
	if s.eof {
		return 0, true, nil
	}
	s.inPipe, s.n = s.n, 0
	if err := s.dst.Write(s.drain); err != nil {
		return s.n, false, err
	}
	if s.errno != 0 {
		return s.n, false, &net.OpError{Op: "splice", Net: "tcp", Err: os.NewSyscallError("splice", s.errno)}
	}
	return s.n, false, nil
}
