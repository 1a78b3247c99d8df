package redisproxy

import (
	"crypto/subtle"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/sidecar/connio"
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

// maxInflight bounds the requests a client may have sent to servers and not
// yet had answered; past it the proxy stops reading from that client until
// servers answer (back-pressure). Answers arrive whether or not the client
// reads, because replies are buffered (up to the client's output limit), so
// a client that writes a whole pipeline before reading cannot stall.
const maxInflight = 1024

// pendingCost is what one queued command holds besides its reply (its
// pending and request and its queue slot), counted against the output limit
// so that a client pipelining many small commands is bounded too.
const pendingCost = 256

func (cl *client) getPending() *pending {
	p := pendingPool.Get().(*pending)
	p.isLoc, p.quit, p.merge = false, false, 0
	p.req.ready.Store(false)
	p.req.cl = cl
	return p
}

func (cl *client) getRequest() *request {
	r := requestPool.Get().(*request)
	r.ready.Store(false)
	r.cl = cl
	return r
}

func putPending(p *pending) {
	for i, r := range p.frags {
		r.cmd, r.cl, r.buf, r.reply = nil, nil, retain(r.buf), retain(r.reply)
		requestPool.Put(r)
		p.frags[i] = nil
	}
	p.frags, p.pos, p.local = p.frags[:0], p.pos[:0], retain(p.local)
	p.req.cmd, p.req.cl = nil, nil
	p.req.buf, p.req.reply = retain(p.req.buf), retain(p.req.reply)
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

// client is one downstream connection. Its goroutine reads, parses and
// routes commands and appends them to queue. Replies are written by whoever
// completes the one at the head of the queue — usually the goroutine reading
// the server connection that answered — so a command at pipeline depth 1
// costs no hand-off to a writer goroutine (twemproxy writes from its event
// loop the same way). At most one goroutine writes at a time (writing);
// replies go out in request order however the servers interleave.
type client struct {
	p      *Proxy
	c      net.Conn
	w      *connio.Writer
	id     uint64
	rd     *resp.Reader
	authed bool
	dirty  []*sconn // server connections with requests from this read
	keys   []int
	answer bool // this read queued a reply that is ready already

	mu         sync.Mutex
	queue      []*pending
	head       int
	writing    bool   // a goroutine owns out and the socket's write side
	out        []byte // replies collected and not yet written (owned by the writer)
	broken     bool   // a write failed: later replies are dropped
	readerDone bool
	drained    chan struct{} // signalled when the reader is done and every reply is out
	slots      chan struct{} // counts requests in flight to servers, for back-pressure

	// held counts the bytes the proxy holds for this client: pendingCost per
	// queued command plus every reply not yet written. Past limit (the
	// configured ClientOutputLimit) the client is closed, as Redis closes a
	// client over its client-output-buffer-limit.
	held      atomic.Int64
	limit     int64
	overLimit atomic.Bool
}

func (p *Proxy) newClient(c net.Conn) *client {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	cl := &client{p: p, c: c, w: connio.NewWriter(c), id: p.nextID.Add(1), drained: make(chan struct{}, 1), slots: make(chan struct{}, maxInflight)}
	cl.limit = clientOutputLimit(&p.snap.Load().cfg)
	cl.rd = resp.NewReader(nil)
	return cl
}

// endRead runs when the client's input is drained: every server connection
// that got requests from this read is written once, and replies the proxy
// answered itself go out.
func (cl *client) endRead() {
	for i, s := range cl.dirty {
		s.flush()
		cl.dirty[i] = nil
	}
	cl.dirty = cl.dirty[:0]
	if cl.answer {
		cl.answer = false
		cl.deliver()
	}
}

// stopReading makes the reader see EOF so it stops after the commands it
// has; their replies are still written.
func (cl *client) stopReading() {
	if tc, ok := cl.c.(*net.TCPConn); ok {
		_ = tc.CloseRead()
		return
	}
	_ = cl.c.SetReadDeadline(time.Unix(1, 0))
}

func (cl *client) serve() {
	st := cl.p.stats
	st.clientsTotal.Add(1)
	st.clientsActive.Add(1)
	cl.readLoop()
	cl.mu.Lock()
	cl.readerDone = true
	busy := cl.writing || cl.head < len(cl.queue)
	cl.mu.Unlock()
	if busy {
		<-cl.drained
	}
	cl.c.Close()
	st.clientsActive.Add(-1)
	cl.p.clientDone(cl)
}

// takeSlot counts one more request in flight to a server, waiting while
// maxInflight are.
func (cl *client) takeSlot() {
	select {
	case cl.slots <- struct{}{}:
	default:
		// Full: send what is queued upstream, or the replies that would free
		// a slot could never arrive.
		cl.endRead()
		cl.slots <- struct{}{}
	}
}

// push queues p; a reply that is ready already is written at endRead.
func (cl *client) push(p *pending) {
	n := int64(pendingCost)
	if p.isLoc {
		n += int64(len(p.local))
	}
	cl.mu.Lock()
	cl.queue = append(cl.queue, p)
	ready := p.ready() // under mu: no writer can have taken p yet
	cl.mu.Unlock()
	if ready {
		cl.answer = true
	}
	cl.hold(n)
}

// hold adds n bytes to what the proxy holds for the client. A client is
// closed when more is added while it holds more than its output limit
// already, so one reply larger than the limit (a big value) still goes out:
// what a client can make the proxy hold is the limit plus one reply.
func (cl *client) hold(n int64) {
	if cl.held.Add(n)-n > cl.limit {
		cl.overflow()
	}
}

// overflow closes a client whose unread replies passed its output limit.
// The error reply is written only where it cannot split a reply: when no
// write is under way (a client that reads nothing would not see it anyway).
// Closing the socket stops the reader and fails any write, so the replies
// still owed are dropped; other clients and the server connections they
// share are not affected.
func (cl *client) overflow() {
	if cl.overLimit.Swap(true) {
		return
	}
	cl.p.stats.outputLimitClosed.Add(1)
	cl.mu.Lock()
	if !cl.writing {
		msg := fmt.Sprintf("ERR client output buffer limit reached: more than %d bytes of replies were not read; closing the connection", cl.limit)
		_, _ = cl.w.TryWrite(resp.AppendError(nil, msg))
	}
	cl.mu.Unlock()
	_ = cl.c.Close()
}

func (cl *client) readLoop() {
	defer cl.endRead()
	_ = connio.ReadLoop(cl.c, cl.rd.Space, func(n int) bool {
		cl.rd.Commit(n)
		for {
			args, raw, ok, err := cl.rd.NextCommand()
			if err != nil {
				p := cl.getPending()
				p.start, p.cmd, p.isLoc, p.quit = time.Now(), unknownIdx, true, true
				p.local = resp.AppendError(p.local, "ERR "+err.Error())
				cl.p.stats.protocolErrors.Add(1)
				cl.push(p)
				return true
			}
			if !ok {
				break
			}
			p := cl.getPending()
			p.start = time.Now()
			cl.dispatch(p, args, raw)
			quit := p.quit // p belongs to the writer once pushed
			cl.push(p)
			if quit {
				return true
			}
		}
		cl.endRead()
		return false
	})
}

// deliver writes every ready reply at the head of the queue. If another
// goroutine is writing, it returns at once: that writer looks at the head
// again before it stops, so the reply is not stranded. The write is
// non-blocking; what the socket cannot take now is finished by a goroutine
// started for it, so a slow client never stalls the server connection that
// delivered its reply, which other clients share.
func (cl *client) deliver() {
	cl.mu.Lock()
	if cl.writing {
		cl.mu.Unlock()
		return
	}
	cl.writing = true
	cl.writeReplies(false)
}

// writeReplies is entered with mu held and writing set, and returns with mu
// released. block says whether the goroutine may wait for the socket.
func (cl *client) writeReplies(block bool) {
	for {
		cl.collect()
		if len(cl.out) == 0 {
			cl.writing = false
			done := cl.readerDone && cl.head == len(cl.queue)
			cl.mu.Unlock()
			if done {
				select {
				case cl.drained <- struct{}{}:
				default:
				}
			}
			return
		}
		cl.mu.Unlock()
		if cl.broken {
			cl.held.Add(-int64(len(cl.out)))
			cl.out = cl.out[:0]
		} else if block {
			cl.wrote(cl.w.WriteAll(cl.out))
		} else if !cl.tryWrite() {
			go cl.finishWrite()
			return
		}
		cl.mu.Lock()
	}
}

// finishWrite takes over a write the socket could not take at once.
func (cl *client) finishWrite() {
	cl.wrote(cl.w.WriteAll(cl.out))
	cl.mu.Lock()
	cl.writeReplies(true)
}

func (cl *client) wrote(err error) {
	if err != nil {
		cl.broken = true
	}
	cl.held.Add(-int64(len(cl.out)))
	cl.out = retain(cl.out)
}

// tryWrite makes one non-blocking write of out and keeps what is left of it;
// false means the rest needs a goroutine that can wait.
func (cl *client) tryWrite() bool {
	n, err := cl.w.TryWrite(cl.out)
	if err == nil && n < len(cl.out) {
		cl.held.Add(-int64(n))
		cl.out = cl.out[:copy(cl.out, cl.out[n:])]
		return false
	}
	cl.wrote(err)
	return true
}

// collect moves every ready reply at the head of the queue into out. It runs
// with mu held.
func (cl *client) collect() {
	st := cl.p.stats
	for cl.head < len(cl.queue) {
		p := cl.queue[cl.head]
		if !p.ready() {
			break
		}
		cl.queue[cl.head] = nil
		cl.head++
		reply := p.local
		in := int64(pendingCost) // what push and finish counted for p
		switch {
		case p.isLoc:
			in += int64(len(p.local))
		case len(p.frags) > 0:
			for _, r := range p.frags {
				in += int64(len(r.reply))
			}
			p.local = mergeReplies(p.local[:0], p)
			reply = p.local
		default:
			in += int64(len(p.req.reply))
			reply = p.req.reply
		}
		switch {
		case cl.broken:
		case len(cl.out) == 0 && len(reply) > maxRetained && !p.isLoc && len(p.frags) == 0:
			// A large reply becomes out without a copy (a 64 MB value is
			// not duplicated); p keeps out's old buffer for reuse.
			cl.out, p.req.reply = p.req.reply, cl.out[:0]
			in -= int64(len(cl.out))
		default:
			cl.out = append(cl.out, reply...)
			in -= int64(len(reply)) // now held in out
		}
		cl.held.Add(-in)
		st.record(p.cmd, resp.IsError(reply), time.Since(p.start))
		putPending(p)
	}
	if cl.head == len(cl.queue) {
		cl.queue, cl.head = cl.queue[:0], 0
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
