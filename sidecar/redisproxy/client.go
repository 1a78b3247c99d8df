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

var pendingPool = sync.Pool{New: func() any { return &pending{req: request{done: make(chan struct{}, 1)}} }}
var requestPool = sync.Pool{New: func() any { return newRequest() }}

func getPending() *pending {
	p := pendingPool.Get().(*pending)
	p.isLoc, p.quit, p.merge = false, false, 0
	return p
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

// client is one downstream connection: a reader goroutine parses and routes
// commands, a writer goroutine returns replies in order.
type client struct {
	p      *Proxy
	c      net.Conn
	id     uint64
	rd     *resp.Reader
	out    chan *pending
	authed bool
	dirty  []*sconn
	keys   []int
}

func (p *Proxy) newClient(c net.Conn) *client {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	cl := &client{p: p, c: c, id: p.nextID.Add(1), out: make(chan *pending, 1024)}
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

func (cl *client) serve() {
	st := cl.p.stats
	st.clientsTotal.Add(1)
	st.clientsActive.Add(1)
	done := make(chan struct{})
	go func() { cl.writeLoop(); close(done) }()
	cl.readLoop()
	close(cl.out)
	<-done
	cl.c.Close()
	st.clientsActive.Add(-1)
	cl.p.clientDone(cl)
}

func (cl *client) readLoop() {
	defer cl.flushUpstreams()
	for {
		args, raw, err := cl.rd.ReadCommand()
		if err != nil {
			if resp.IsProtocol(err) {
				p := getPending()
				p.start, p.cmd, p.isLoc, p.quit = time.Now(), unknownIdx, true, true
				p.local = resp.AppendError(p.local, "ERR "+err.Error())
				cl.p.stats.protocolErrors.Add(1)
				cl.out <- p
			}
			return
		}
		p := getPending()
		p.start = time.Now()
		cl.dispatch(p, args, raw)
		cl.out <- p
		if p.quit {
			return
		}
	}
}

func (cl *client) writeLoop() {
	bw := bufio.NewWriterSize(cl.c, 16<<10)
	st := cl.p.stats
	broken := false
	for {
		var p *pending
		select {
		case p = <-cl.out:
		default:
			if !broken && bw.Flush() != nil {
				broken = true
			}
			p = <-cl.out
		}
		if p == nil {
			if !broken {
				_ = bw.Flush()
			}
			return
		}
		var reply []byte
		switch {
		case p.isLoc:
			reply = p.local
		case len(p.frags) > 0:
			for _, r := range p.frags {
				cl.wait(bw, r, &broken)
			}
			p.local = mergeReplies(p.local[:0], p)
			reply = p.local
		default:
			cl.wait(bw, &p.req, &broken)
			reply = p.req.reply
		}
		if !broken {
			if _, err := bw.Write(reply); err != nil {
				broken = true
			}
		}
		st.record(p.cmd, resp.IsError(reply), time.Since(p.start))
		quit := p.quit
		putPending(p)
		if quit {
			_ = bw.Flush()
			cl.c.Close()
			// drain whatever the reader already queued
			for p := range cl.out {
				cl.drain(p)
			}
			return
		}
	}
}

// wait blocks for r's reply, flushing buffered replies first if it is not
// ready so that a pipelining client is never starved.
func (cl *client) wait(bw *bufio.Writer, r *request, broken *bool) {
	select {
	case <-r.done:
		return
	default:
	}
	if !*broken && bw.Buffered() > 0 && bw.Flush() != nil {
		*broken = true
	}
	<-r.done
}

func (cl *client) drain(p *pending) {
	if !p.isLoc {
		if len(p.frags) > 0 {
			for _, r := range p.frags {
				<-r.done
			}
		} else {
			<-p.req.done
		}
	}
	putPending(p)
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
