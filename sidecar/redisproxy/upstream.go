package redisproxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// request is one command sent to one server. When its reply has been stored
// in reply, ready is set and the caller delivers the owning client's ready
// replies. Requests are pooled and reused.
type request struct {
	cmd   []byte // bytes to send; may alias the client's read buffer until enqueued
	buf   []byte // backing storage for cmd when the proxy builds it
	reply []byte
	ready atomic.Bool
	cl    *client // the client owed the reply
}

// complete stores the reply and returns the client to deliver it to.
func (r *request) complete(raw []byte) *client {
	r.reply = append(r.reply[:0], raw...)
	return r.finish()
}

// fail answers the request with an error reply and returns the client to
// deliver it to.
func (r *request) fail(msg string) *client {
	r.reply = resp.AppendError(r.reply[:0], msg)
	return r.finish()
}

// finish frees r's in-flight slot, counts its reply against the client's
// output limit and marks it ready.
func (r *request) finish() *client {
	cl := r.cl // read before ready: once ready the client may recycle r
	<-cl.slots
	cl.hold(int64(len(r.reply)))
	r.ready.Store(true)
	return cl
}

// upstream is one Redis server of a pool: its connections, health and stats.
type upstream struct {
	key       string // pool|name|addr|user|pass-hash: identity across Updates
	poolName  string
	name      string
	addr      string
	user      string
	pass      string
	opTimeout time.Duration
	// meshed: dialed with mutual TLS from tlsCfg (the proxy's) when set (meshtls.go).
	meshed   bool
	tlsCfg   *atomic.Pointer[tls.Config]
	conns    []atomic.Pointer[sconn]
	mu       sync.Mutex // serialises connection creation
	nextDial atomic.Int64
	lastErr  atomic.Pointer[string]

	pool     atomic.Pointer[pool]
	down     atomic.Bool
	failures atomic.Int32
	closed   atomic.Bool
	stop     chan struct{}

	// stats
	connsOpen  atomic.Int64
	ejections  atomic.Uint64
	connErrors atomic.Uint64
	// tlsFailures counts failed mutual TLS handshakes (meshtls.go).
	tlsFailures atomic.Uint64
}

// dialBackoff stops a dead server from being dialled for every request.
const dialBackoff = 100 * time.Millisecond

func (u *upstream) label() string { return fmt.Sprintf("%s (%s)", u.name, u.addr) }

// get returns a usable connection for the client with the given id.
func (u *upstream) get(id uint64) (*sconn, string) {
	i := int(id % uint64(len(u.conns)))
	if s := u.conns[i].Load(); s != nil {
		return s, ""
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if s := u.conns[i].Load(); s != nil {
		return s, ""
	}
	if u.closed.Load() {
		return nil, fmt.Sprintf("ERR server %s was removed from the configuration; retry", u.label())
	}
	if time.Now().UnixNano() < u.nextDial.Load() {
		msg := "unreachable"
		if p := u.lastErr.Load(); p != nil {
			msg = *p
		}
		return nil, fmt.Sprintf("ERR cannot connect to server %s: %s; retry shortly", u.label(), msg)
	}
	s := &sconn{up: u, slot: i, kick: make(chan struct{}, 1), dead: make(chan struct{})}
	u.conns[i].Store(s)
	go s.connect()
	return s, ""
}

// closeAll drops every connection (server removed or proxy shut down).
func (u *upstream) closeAll() {
	if u.closed.Swap(true) {
		return
	}
	close(u.stop)
	for i := range u.conns {
		if s := u.conns[i].Load(); s != nil {
			s.fail(fmt.Sprintf("ERR server %s was removed from the configuration; retry", u.label()), false)
		}
	}
}

// sconn is one pipelined connection to a server: clients append requests to
// wbuf and queue under mu; a writer goroutine sends wbuf in one write per
// batch and a reader goroutine matches replies to queue in FIFO order.
type sconn struct {
	up    *upstream
	slot  int
	mu    sync.Mutex
	c     net.Conn
	w     *connio.Writer
	wbuf  []byte
	spare []byte       // the other write buffer, swapped with wbuf per write
	rd    *resp.Reader // replies; owned by readLoop
	queue []*request
	head  int
	// closed is set once; after it no request is accepted.
	closed bool
	kick   chan struct{}
	dead   chan struct{}
}

// enqueue appends r to the connection; false means the connection is dead.
// r.cmd is copied, so it may alias a buffer the caller reuses.
func (s *sconn) enqueue(r *request) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.wbuf = append(s.wbuf, r.cmd...)
	s.queue = append(s.queue, r)
	if len(s.queue)-s.head == 1 && s.c != nil && s.up.opTimeout > 0 {
		_ = s.c.SetReadDeadline(time.Now().Add(s.up.opTimeout))
	}
	s.mu.Unlock()
	return true
}

// flush wakes the writer; callers batch many enqueues per flush.
func (s *sconn) flush() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *sconn) connect() {
	u := s.up
	timeout := u.opTimeout
	if timeout <= 0 || timeout > 5*time.Second {
		timeout = 5 * time.Second
	}
	c, err := u.dial(timeout, max(timeout, meshHandshakeBudget))
	if err == nil {
		err = upstreamAuth(c, u.user, u.pass, timeout)
		if err != nil {
			c.Close()
		}
	}
	if err != nil {
		msg := err.Error()
		u.lastErr.Store(&msg)
		u.nextDial.Store(time.Now().Add(dialBackoff).UnixNano())
		s.fail(fmt.Sprintf("ERR cannot connect to server %s: %s; retry shortly", u.label(), msg), true)
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.c = c
	s.w = connio.NewWriter(c)
	s.rd = resp.NewReader(nil)
	if len(s.queue) > s.head && u.opTimeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(u.opTimeout))
	}
	s.mu.Unlock()
	u.connsOpen.Add(1)
	go s.readLoop()
	s.flush()
	s.writeLoop()
}

// upstreamAuth authenticates a fresh server connection. The password never
// appears in errors.
func upstreamAuth(c net.Conn, user, pass string, timeout time.Duration) error {
	if pass == "" {
		return nil
	}
	args := [][]byte{[]byte("AUTH"), []byte(pass)}
	if user != "" {
		args = [][]byte{[]byte("AUTH"), []byte(user), []byte(pass)}
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := c.Write(resp.AppendCommand(nil, args...)); err != nil {
		return fmt.Errorf("sending AUTH: %w", err)
	}
	raw, err := resp.NewReader(c).ReadReply()
	if err != nil {
		return fmt.Errorf("reading AUTH reply: %w", err)
	}
	if resp.IsError(raw) {
		return fmt.Errorf("server refused the proxy's AUTH (%s); check the upstream credentials", string(raw[1:len(raw)-2]))
	}
	return nil
}

func (s *sconn) writeLoop() {
	for {
		select {
		case <-s.kick:
		case <-s.dead:
			return
		}
		// Let the other runnable clients append their requests first, so one
		// write carries many of them (twemproxy's batching, without a timer).
		runtime.Gosched()
		s.mu.Lock()
		buf := s.wbuf
		s.wbuf = s.spare[:0]
		s.mu.Unlock()
		if len(buf) == 0 {
			s.spare = buf
			continue
		}
		err := s.w.WriteAll(buf)
		s.spare = retain(buf)
		if err != nil {
			s.fail(fmt.Sprintf("ERR lost connection to server %s: %v; the command may or may not have run", s.up.label(), err), true)
			return
		}
	}
}

func (s *sconn) readLoop() {
	u := s.up
	rd := s.rd
	var (
		touched []*client // clients with replies completed in this read
		failure string
	)
	handle := func(n int) bool {
		rd.Commit(n)
		for {
			raw, ok, err := rd.NextReply()
			if err != nil {
				failure = fmt.Sprintf("ERR server %s sent a malformed reply (%v); the command may or may not have run", u.label(), err)
				return true
			}
			if !ok {
				break
			}
			s.mu.Lock()
			if s.head == len(s.queue) {
				s.mu.Unlock()
				failure = fmt.Sprintf("ERR server %s sent a reply nobody asked for", u.label())
				return true
			}
			r := s.queue[s.head]
			s.queue[s.head] = nil
			s.head++
			if s.head == len(s.queue) {
				s.queue = s.queue[:0]
				s.head = 0
			}
			s.mu.Unlock()
			if raw[0] == '-' && isServerTrouble(raw) {
				u.passiveFailure()
			} else if u.failures.Load() != 0 {
				u.failures.Store(0)
			}
			if len(raw) > maxRetained {
				// A large reply keeps the read buffer it is in instead of
				// being copied out of it (a 64 MB GET holds one copy).
				rd.Detach()
				r.reply = raw[:len(raw):len(raw)]
				touched = addClient(touched, r.finish())
			} else {
				touched = addClient(touched, r.complete(raw))
			}
		}
		// Replies go out once per read, not once per reply.
		for i, cl := range touched {
			cl.deliver()
			touched[i] = nil
		}
		touched = touched[:0]
		s.armDeadline()
		return false
	}
	for {
		err := connio.ReadLoop(s.c, rd.Space, handle)
		switch {
		case failure != "":
			s.fail(failure, true)
		case errors.Is(err, os.ErrDeadlineExceeded):
			s.mu.Lock()
			idle := len(s.queue) == s.head
			s.mu.Unlock()
			if idle {
				s.armDeadline()
				continue
			}
			s.fail(fmt.Sprintf("ERR server %s did not answer within %v; the command may or may not have run", u.label(), u.opTimeout), true)
		default:
			s.fail(fmt.Sprintf("ERR lost connection to server %s: %v; the command may or may not have run", u.label(), err), true)
		}
		return
	}
}

// armDeadline bounds the wait for the oldest outstanding reply by opTimeout,
// and lifts the bound while nothing is outstanding.
func (s *sconn) armDeadline() {
	if s.up.opTimeout <= 0 {
		return
	}
	s.mu.Lock()
	if len(s.queue) > s.head {
		_ = s.c.SetReadDeadline(time.Now().Add(s.up.opTimeout))
	} else {
		_ = s.c.SetReadDeadline(time.Time{})
	}
	s.mu.Unlock()
}

// addClient appends cl to list unless it is there already.
func addClient(list []*client, cl *client) []*client {
	for _, c := range list {
		if c == cl {
			return list
		}
	}
	return append(list, cl)
}

// isServerTrouble reports error replies that mean the server cannot serve
// now (twemproxy's redis_failure): they count towards ejection.
func isServerTrouble(raw []byte) bool {
	return bytes.HasPrefix(raw, []byte("-LOADING")) || bytes.HasPrefix(raw, []byte("-BUSY ")) || bytes.HasPrefix(raw, []byte("-OOM"))
}

// fail closes the connection once and answers every queued request with msg,
// in order. countFailure feeds passive health checking.
func (s *sconn) fail(msg string, countFailure bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	q := s.queue[s.head:]
	s.queue, s.head, s.wbuf = nil, 0, nil
	c := s.c
	s.mu.Unlock()
	close(s.dead)
	s.up.conns[s.slot].CompareAndSwap(s, nil)
	if c != nil {
		c.Close()
		s.up.connsOpen.Add(-1)
	}
	var touched []*client
	for _, r := range q {
		touched = addClient(touched, r.fail(msg))
	}
	for _, cl := range touched {
		cl.deliver()
	}
	if countFailure {
		s.up.connErrors.Add(1)
		s.up.passiveFailure()
	}
}
