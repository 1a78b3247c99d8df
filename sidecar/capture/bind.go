package capture

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
)

// The inbound listener of a pod that serves only TCP (config.CaptureListener.Bind; docs/mtls.md,
// "TCP"): it has no HTTP chain, so no HTTP listener is bound at its address to offer the
// capture plane its connections (Divert). The capture plane binds the address itself,
// accepts, reads each connection's original destination and runs the listener's chain
// (serve: mesh TLS in front, then the TCP passthrough to 127.0.0.1:<original port>). A
// connection that was not redirected (sent to :15006 itself) has nothing to reach: it is
// closed and counted (weft_capture_inbound_direct_refused_total).

// boundListener is a capture listener's own socket.
type boundListener struct {
	name, addr string // the config's address; ln may be bound elsewhere (Options.ListenAddress)
	ln         net.Listener
	// open counts the listener's connections from accept to close (through the TLS
	// handshake, before any chain counts them): at most the listener's connection cap.
	open atomic.Int64
}

// bindListeners binds the listeners of cfg that want it and closes those that left (or
// moved). A listener that fails to bind is tried again at the next Apply.
func (c *Capture) bindListeners(cfg *config.Config) error {
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	if c.closed {
		return nil
	}
	want := map[string]*config.CaptureListener{}
	for _, cl := range cfg.CaptureListeners {
		if cl.Bind {
			want[cl.Name] = cl
		}
	}
	for name, b := range c.bound {
		if cl, ok := want[name]; !ok || cl.Address != b.addr {
			_ = b.ln.Close()
			delete(c.bound, name)
		}
	}
	var errs []error
	for name, cl := range want {
		if _, ok := c.bound[name]; ok {
			continue
		}
		addr := cl.Address
		if o, ok := c.opts.ListenAddress[name]; ok {
			addr = o
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s: binding %s: %w", name, addr, err))
			continue
		}
		b := &boundListener{name: name, addr: cl.Address, ln: ln}
		c.bound[name] = b
		c.opts.Logger.Info("listening", "listener", name, "address", ln.Addr().String(), "mode", "TCP only (no HTTP chain)")
		go c.acceptBound(b)
	}
	return errors.Join(errs...)
}

// Addr is the address the capture plane bound for the named listener (nil: none).
func (c *Capture) Addr(listener string) net.Addr {
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	if b := c.bound[listener]; b != nil {
		return b.ln.Addr()
	}
	return nil
}

// Close stops accepting on the listeners the capture plane bound (the SIGTERM drain);
// connections already proxied go on until they end or the process exits.
func (c *Capture) Close() {
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	c.closed = true
	for name, b := range c.bound {
		_ = b.ln.Close()
		delete(c.bound, name)
	}
}

// acceptBound accepts b's connections until its socket is closed.
func (c *Capture) acceptBound(b *boundListener) {
	delay := time.Duration(0)
	for {
		nc, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: back off as net/http does (5 ms doubling to 1 s).
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			c.opts.Logger.Warn("accept failed", "listener", b.name, "err", err, "retryIn", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		st := (*c.listeners.Load())[b.name]
		if st == nil {
			nc.Close()
			continue
		}
		if lim := int64(st.cfg.Limits.MaxConnections); b.open.Add(1) > lim && lim > 0 {
			b.open.Add(-1)
			c.stats.overflow.Add(1)
			nc.Close()
			continue
		}
		go func() {
			defer b.open.Add(-1)
			dst, ok := redirectedTo(nc)
			if !ok {
				c.stats.inboundDirect.Add(1)
				nc.Close()
				return
			}
			c.serve(st, nc, dst, st.cfg.Select(dst))
		}()
	}
}

// redirectedTo is the original destination of a connection iptables redirected; false
// for one sent to the listener's own address.
func redirectedTo(nc net.Conn) (netip.AddrPort, bool) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false
	}
	var dst netip.AddrPort
	ok = false
	_ = rc.Control(func(fd uintptr) {
		if d, found := OriginalDst(int(fd)); found && d != localAddr(int(fd)) {
			dst, ok = d, true
		}
	})
	return dst, ok
}

// boundState is the Capture's part for bound listeners.
type boundState struct {
	bindMu sync.Mutex
	bound  map[string]*boundListener
	closed bool
}
