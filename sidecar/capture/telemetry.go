package capture

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// The Istio TCP metrics of proxied connections (sidecar/telemetry). The bytes are the
// kernel's count for the caller's socket (TCP_INFO: bytes received from it, bytes it
// acknowledged), read once as the connection closes, so the copy loop is untouched.

// reportTCP counts a proxied connection opened and returns what counts it closed, with
// its bytes; it must run before down is closed. With no telemetry it does nothing.
func (c *Capture) reportTCP(inbound bool, cluster string, down net.Conn) func() {
	tel := c.opts.Telemetry
	if tel == nil {
		return func() {}
	}
	s := tel.TCP(inbound, cluster)
	s.Opened()
	return func() {
		sent, received := tcpBytes(down)
		s.Closed(sent, received)
	}
}

// Linux TCP states (include/net/tcp_states.h).
const (
	tcpFinWait2  = 5
	tcpTimeWait  = 6
	tcpClose     = 7
	tcpCloseWait = 8
	tcpLastAck   = 9
	tcpClosing   = 11
)

// tcpBytes is what the kernel counted on a TCP socket: bytes the peer acknowledged (sent
// to it) and bytes received from it; zero for a connection that is not a socket.
func tcpBytes(conn net.Conn) (sent, received uint64) {
	if m, ok := conn.(interface{ socket() net.Conn }); ok {
		conn = m.socket() // terminated mutual TLS: the socket's bytes are TLS records
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return 0, 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0
	}
	_ = rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			sent, received = ti.Bytes_acked, ti.Bytes_received
			// Both count sequence space, where a FIN takes one: the peer's once it came,
			// ours once it was acknowledged. CLOSE after both: a reset connection is
			// undercounted by at most a byte each way.
			switch ti.State {
			case tcpCloseWait, tcpLastAck, tcpClosing, tcpTimeWait, tcpClose:
				received = max(received, 1) - 1
			}
			switch ti.State {
			case tcpFinWait2, tcpTimeWait, tcpClose:
				sent = max(sent, 1) - 1
			}
		}
	})
	return sent, received
}
