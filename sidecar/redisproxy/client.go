package redisproxy

import (
	"bufio"
	"crypto/subtle"
	"net"
	"sync"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// pending is one client command awaiting its reply, kept in arrival order so
// replies go back in order however the servers interleave.
type pending struct {
	req   request    // single-server commands
	frags []*request // split commands, one per server
	pos   []int32    // MGET: for each key, the fragment that holds it
	merge kind
	local []byte // reply computed by the proxy
	isLoc bool
	cmd   int // stats index
	start time.Time
	quit  bool // close the connection after this reply
}

var pendingPool = sync.Pool{New: func() any { return &pending{} }}
var requestPool = sync.Pool{New: func() any { return &request{} }}

// maxPending bounds the commands a client may have awaiting replies; past it
// the proxy stops reading from that client (back-pressure).
const maxPending = 1024

func (cl *client) getPending() *pending {
	p := pendingPool.Get().(*pending)
	p.isLoc, p.quit, p.merge = false, false, 0
	p.req.ready.Store(false)
	p.req.notify = cl.notify
	return p
}

func (cl *client) getRequest() *request {
	r := requestPool.Get().(*request)
	r.ready.Store(false)
	r.notify = cl.notify
	return r
}

func putPending(p *pending) {
	for i, r := range p.frags {
		requestPool.Put(r)
		p.frags[i] = nil
	}
	p.frags, p.pos, p.local = p.frags[:0], p.pos[:0], p.local[:0]
	p.req.cmd = nil
	if cap(p.req.reply) > 64<<10 {
		p.req.reply = nil
	}
	pendingPool.Put(p)
}

// ready reports whether p's reply can be written.
func (p *pending) ready() bool {
	if p.isLoc {
		return true
	}
	if len(p.frags) == 0 {
		return p.req.ready.Load()
	}
	for _, r := range p.frags {
		if !r.ready.Load() {
			return false
		}
	}
	return true
}

// client is one downstream connection. Its reader goroutine parses and routes
// commands and appends them to queue; its writer goroutine is woken only when
// a reply completes and writes every ready reply at the head of queue, so
// replies leave in request order with one wake-up per completed batch.
type client struct {
	p      *Proxy
	c      net.Conn
	id     uint64
	rd     *resp.Reader
	authed bool
	dirty  []*sconn
	keys   []int

	mu         sync.Mutex
	queue      []*pending
	head       int
	readerDone bool
	notify     chan struct{} // wakes the writer
	slots      chan struct{} // counts queued commands, for back-pressure
}

func (p *Proxy) newClient(c net.Conn) *client {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	cl := &client{p: p, c: c, id: p.nextID.Add(1), notify: make(chan struct{}, 1), slots: make(chan struct{}, maxPending)}
	cl.rd = resp.NewReader(c)
	cl.rd.OnRead = cl.flushUpstreams
	return cl
}

// flushUpstreams runs whenever the client's read buffer is drained: every
// server connection that got requests from this batch is written once.
func (cl *client) flushUpstreams() {
	for i, s := range cl.dirty {
		s.flush()
		cl.dirty[i] = nil
	}
	cl.dirty = cl.dirty[:0]
}

// stopReading makes the reader see EOF so the writer drains and closes.
func (cl *client) stopReading() {
	if tc, ok := cl.c.(*net.TCPConn); ok {
		_ = tc.CloseRead()
		return
	}
	_ = cl.c.SetReadDeadline(time.Unix(1, 0))
}

func (cl *client) wake() {
	select {
	case cl.notify <- struct{}{}:
	default:
	}
}

func (cl *client) serve() {
	st := cl.p.stats
	st.clientsTotal.Add(1)
	st.clientsActive.Add(1)
	done := make(chan struct{})
	go func() { cl.writeLoop(); close(done) }()
	cl.readLoop()
	cl.mu.Lock()
	cl.readerDone = true
	cl.mu.Unlock()
	cl.wake()
	<-done
	cl.c.Close()
	st.clientsActive.Add(-1)
	cl.p.clientDone(cl)
}

// push queues p for the writer, waking it if p is already answerable.
func (cl *client) push(p *pending) {
	select {
	case cl.slots <- struct{}{}:
	default:
		// Full: send what is queued upstream, or the replies that would free
		// a slot could never arrive.
		cl.flushUpstreams()
		cl.slots <- struct{}{}
	}
	cl.mu.Lock()
	cl.queue = append(cl.queue, p)
	ready := p.ready() // under mu: the writer cannot have taken p yet
	cl.mu.Unlock()
	if ready {
		cl.wake()
	}
}

func (cl *client) readLoop() {
	defer cl.flushUpstreams()
	for {
		args, raw, err := cl.rd.ReadCommand()
		if err != nil {
			if resp.IsProtocol(err) {
				p := cl.getPending()
				p.start, p.cmd, p.isLoc, p.quit = time.Now(), unknownIdx, true, true
				p.local = resp.AppendError(p.local, "ERR "+err.Error())
				cl.p.stats.protocolErrors.Add(1)
				cl.push(p)
			}
			return
		}
		p := cl.getPending()
		p.start = time.Now()
		cl.dispatch(p, args, raw)
		quit := p.quit // p belongs to the writer once pushed
		cl.push(p)
		if quit {
			return
		}
	}
}

// next returns the head of the queue if its reply is ready; done reports
// that the reader has finished and nothing is left.
func (cl *client) next() (p *pending, done bool) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.head == len(cl.queue) {
		return nil, cl.readerDone
	}
	p = cl.queue[cl.head]
	if !p.ready() {
		return nil, false
	}
	cl.queue[cl.head] = nil
	cl.head++
	if cl.head == len(cl.queue) {
		cl.queue, cl.head = cl.queue[:0], 0
	}
	return p, false
}

func (cl *client) writeLoop() {
	bw := bufio.NewWriterSize(cl.c, 16<<10)
	st := cl.p.stats
	broken, quitting := false, false
	for {
		p, done := cl.next()
		if p == nil {
			if !broken && bw.Buffered() > 0 && bw.Flush() != nil {
				broken = true
			}
			if done {
				return
			}
			<-cl.notify
			continue
		}
		<-cl.slots
		reply := p.local
		switch {
		case p.isLoc:
		case len(p.frags) > 0:
			p.local = mergeReplies(p.local[:0], p)
			reply = p.local
		default:
			reply = p.req.reply
		}
		if !broken && !quitting {
			if _, err := bw.Write(reply); err != nil {
				broken = true
			}
		}
		st.record(p.cmd, resp.IsError(reply), time.Since(p.start))
		if p.quit && !quitting {
			quitting = true
			_ = bw.Flush()
			cl.c.Close()
		}
		putPending(p)
	}
}

// checkAuth compares credentials in constant time.
func checkAuth(cfg *Config, user, pass []byte) bool {
	if cfg.DownstreamUsername != "" || user != nil {
		want := cfg.DownstreamUsername
		if want == "" {
			want = "default"
		}
		if user == nil || subtle.ConstantTimeCompare(user, []byte(want)) != 1 {
			return false
		}
	}
	ok := false
	for _, pw := range cfg.DownstreamPasswords {
		if subtle.ConstantTimeCompare(pass, []byte(pw)) == 1 {
			ok = true
		}
	}
	return ok
}
