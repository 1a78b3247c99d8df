package upstream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
)

// HTTP/2 upstreams (h2c with prior knowledge; to meshed endpoints, HTTP/2 over mutual TLS
// negotiated with ALPN h2, meshtls.go). Each host keeps its own connections, made
// with net/http's HTTP/2 client one connection at a time (http.Transport.NewClientConn),
// so the sidecar decides how many there are and how many streams each carries:
//   - streams per connection ≤ the cluster's MaxStreamsPerConn (http2_protocol_options.
//     max_concurrent_streams, default config.DefaultMaxStreamsPerConn) and ≤ the peer's
//     SETTINGS_MAX_CONCURRENT_STREAMS (the client never exceeds it);
//   - connections per host ≤ MaxH2ConnsPerHost, and every connection holds one of the
//     cluster's max_connections slots (OpenH2Conn, connlimit.go); a host's first
//     connection is opened even when they are all taken, as Envoy does;
//   - a request that finds every slot taken waits for one (h2pool.slots), until its
//     context or deadline ends; the cluster's max_requests breaker bounds how many wait.

// MaxH2ConnsPerHost caps the HTTP/2 connections to one endpoint. HTTP/2 multiplexes, so a
// few connections carry any load one sidecar makes (Envoy opens one per worker thread);
// more than one spreads the frame-writing lock and the peer's per-connection flow control.
const MaxH2ConnsPerHost = 4

// Flow-control windows the sidecar grants an upstream, which bound what it buffers of
// responses its callers read slower than the upstream sends: 64 KiB per stream (Envoy's
// edge value), and per connection every stream's window at once — the cluster's
// MaxStreamsPerConn × 64 KiB (6.25 MiB at the default 100), so callers that stop reading
// some responses — a server-streaming RPC whose client is behind — never use up the
// window a shared connection's other streams need (net/http's client returns connection
// window only as bodies are read). Go's client defaults are 4 MiB per stream and 1 GiB
// per connection; 64 KiB still moves ~65 MB/s a stream at a 1 ms round trip, ~650 MB/s
// at 100 µs.
const h2StreamWindow = 64 << 10

// h2Config is the HTTP/2 configuration of a connection that may carry maxStreams streams.
// HTTP/2 caps a window at 2^31-1 (net/http would take a larger value for its 1 GiB
// default), so past 32,767 streams the connection's window stays at 32,767 × 64 KiB.
func h2Config(maxStreams int) *http.HTTP2Config {
	return &http.HTTP2Config{MaxReceiveBufferPerStream: h2StreamWindow,
		MaxReceiveBufferPerConnection: min(maxStreams, math.MaxInt32/h2StreamWindow) * h2StreamWindow}
}

// h2Transports holds a transport per connection window: net/http reads a transport's
// HTTP2Config once, so clusters allowing different numbers of streams per connection
// need transports of their own. It keeps one for each of the first maxH2Transports
// distinct max_concurrent_streams settings seen; past that (a control plane that keeps
// changing the setting) each dial gets a transport of its own, which goes with its
// connection: a transport made only for NewClientConn keeps no connections of its own.
type h2Transports struct {
	mu       sync.Mutex
	byWindow map[int]*http.Transport
	make     func(*http.HTTP2Config) *http.Transport
}

// get returns the transport for connections carrying up to maxStreams streams.
func (t *h2Transports) get(maxStreams int) *http.Transport {
	cfg := h2Config(maxStreams)
	t.mu.Lock()
	defer t.mu.Unlock()
	tr := t.byWindow[cfg.MaxReceiveBufferPerConnection]
	if tr == nil {
		if t.byWindow == nil {
			t.byWindow = map[int]*http.Transport{}
		}
		tr = t.make(cfg)
		if len(t.byWindow) < maxH2Transports {
			t.byWindow[cfg.MaxReceiveBufferPerConnection] = tr
		}
	}
	return tr
}

// maxH2Transports bounds the transports an h2Transports keeps.
const maxH2Transports = 16

// h2cTransports dial HTTP/2 upstream connections in cleartext: HTTP/2 only, no proxy.
var h2cTransports = &h2Transports{make: func(cfg *http.HTTP2Config) *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{Protocols: &p, Proxy: nil, ForceAttemptHTTP2: true, DialContext: dialH2, HTTP2: cfg}
}}

// h2pool is one host's HTTP/2 connections.
//
// The pool counts the streams it has given each connection itself and takes no
// reservations on http.ClientConn: a reservation made before the peer's first SETTINGS
// still counts against a lower limit those SETTINGS then set, and the next RoundTrip waits
// for a slot while holding the connection's request lock that the other reservations'
// RoundTrips need to give theirs back, so they all wait until their deadlines. With an
// upstream advertising SETTINGS_MAX_CONCURRENT_STREAMS 1, ten concurrent calls stalled
// for the route timeout that way (TestFrameRelayUpstreamAllowingOneStreamServesTenConcurrentCalls).
type h2pool struct {
	mu    sync.Mutex
	conns []*h2conn
	slots chan struct{} // one token per stream the host may carry at once; made on first use
	// dialing connections count against the cap.
	dialing int
	// freed, made by a request that waits for a stream, is closed when a stream ends, a
	// dial finishes or a connection says it has room.
	freed  chan struct{}
	closed bool // the host left its cluster: connections close once idle
}

type h2conn struct {
	cc       *http.ClientConn
	w        *FlushBehind // its socket's writer (nil: none, and request bodies do not wait for room)
	lastUsed time.Time
	streams  int // requests the pool has given this connection that have not ended
	// settled: the peer's first SETTINGS have been applied, so what the connection reports
	// as available is the peer's limit. Until then it carries one stream (room).
	settled bool
	reaping bool // a timer will close it if it is still idle at the cluster's idle timeout
	// slot is the cluster whose max_connections slot the connection holds, until it leaves
	// the pool (release).
	slot *Cluster
}

// closeH2Conn closes a pooled connection. Never with p.mu held: net/http's
// ClientConn.Close may run the connection's state hook on the closing goroutine, and the
// hook takes p.mu. Whether it does depends on which goroutine sees the close first (the
// connection's read loop usually does), so tests replace this with a close that always
// takes the lock as that hook would.
var closeH2Conn = func(cc *http.ClientConn) { cc.Close() }

// dropLocked takes c out of the pool and returns the cluster whose slot it held, nil if it
// was out already; the caller closes c and gives the slot back (release) after p.mu.
func (p *h2pool) dropLocked(c *h2conn) *Cluster {
	for i, x := range p.conns {
		if x == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	cl := c.slot
	c.slot = nil
	return cl
}

// release gives back the max_connections slot of a connection that left its pool.
func release(cl *Cluster) {
	if cl != nil {
		cl.ConnClosed(nil, false)
	}
}

// goClientInitialStreams is the limit Go's HTTP/2 client assumes until the peer's first
// SETTINGS arrive; a peer's SETTINGS without SETTINGS_MAX_CONCURRENT_STREAMS make it 1,000.
const goClientInitialStreams = 100

func (p *h2pool) tokens(streams, conns int) chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.slots == nil {
		p.slots = make(chan struct{}, streams*conns)
	}
	return p.slots
}

// room reports whether c may take another stream: under the cluster's cap and under what
// the peer allows, which is what http.ClientConn reports as available plus in flight.
// Before the peer's first SETTINGS Go's client assumes 100 streams, and the streams past a
// lower limit the SETTINGS then set are refused (or, by net/http's server once it has its
// SETTINGS acknowledged, reset with PROTOCOL_ERROR, which cannot be sent again). So a new
// connection carries one stream until its limit differs from that assumption (SETTINGS
// applied: the state hook wakes the waiting requests when it grew) or its first response
// arrives (settle).
func (c *h2conn) room(maxStreams int) bool {
	avail := c.cc.Available()
	if avail <= 0 {
		return false
	}
	limit := avail + c.cc.InFlight()
	if !c.settled {
		if limit == goClientInitialStreams {
			return c.streams == 0
		}
		c.settled = true
	}
	return c.streams < min(maxStreams, limit)
}

// settle notes that c's first response arrived: the peer's SETTINGS, sent before it, apply.
func (p *h2pool) settle(c *h2conn) {
	p.mu.Lock()
	if !c.settled {
		c.settled = true
		p.wakeLocked()
	}
	p.mu.Unlock()
}

// wakeLocked lets requests waiting for a stream look again.
func (p *h2pool) wakeLocked() {
	if p.freed != nil {
		close(p.freed)
		p.freed = nil
	}
}

// conn returns a connection with a stream counted on it, dialing one when every
// connection is at its stream cap and the host has room for another (connections being
// dialed count against that room), and otherwise waiting for a stream to end.
func (p *h2pool) conn(ctx context.Context, cl *Cluster, dial h2Dial, addr string, maxStreams, maxConns int, idle, connectTimeout time.Duration) (*h2conn, error) {
	var gone []*Cluster
	var closing []*http.ClientConn
	overflowed := false // counted once per request that waits for a max_connections slot
	for {
		p.mu.Lock()
		now := time.Now()
		live := p.conns[:0]
		for _, c := range p.conns {
			switch {
			case c.cc.Err() != nil, idle > 0 && c.streams == 0 && now.Sub(c.lastUsed) > idle:
				closing = append(closing, c.cc) // closed after p.mu: Close runs the state hook, which takes it
				gone = append(gone, c.slot)
				c.slot = nil
			default:
				live = append(live, c)
			}
		}
		clear(p.conns[len(live):])
		p.conns = live
		if len(gone) > 0 {
			p.mu.Unlock()
			for _, cc := range closing {
				closeH2Conn(cc)
			}
			closing = closing[:0]
			for _, g := range gone {
				release(g)
			}
			gone = gone[:0]
			p.mu.Lock()
		}
		for _, c := range p.conns {
			if c.room(maxStreams) {
				c.streams++
				p.mu.Unlock()
				return c, nil
			}
		}
		// A host's first connection is opened whatever the cluster's other hosts hold;
		// more need a max_connections slot.
		first := len(p.conns)+p.dialing == 0
		full := len(p.conns)+p.dialing >= maxConns
		if !full && !cl.OpenH2Conn(first) {
			full = true
			if !overflowed {
				overflowed = true
				cl.Stats.ConnOverflow.Add(1)
			}
		}
		if full {
			if p.freed == nil {
				p.freed = make(chan struct{})
			}
			wait := p.freed
			p.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		p.dialing++
		p.mu.Unlock()
		cc, w, err := dial.dial(ctx, addr, connectTimeout)
		p.mu.Lock()
		p.dialing--
		p.wakeLocked()
		if err != nil {
			p.mu.Unlock()
			release(cl)
			return nil, err
		}
		c := &h2conn{cc: cc, w: w, lastUsed: now, streams: 1, slot: cl}
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		// Called when the connection has more room (the peer's SETTINGS raised its
		// limit, a stream ended) or failed: requests waiting for a stream look again, and
		// a failed connection leaves the pool with its slot.
		cc.SetStateHook(func(cc *http.ClientConn) {
			var gone *Cluster
			p.mu.Lock()
			if cc.Err() != nil {
				gone = p.dropLocked(c)
			}
			p.wakeLocked()
			p.mu.Unlock()
			release(gone)
		})
		return c, nil
	}
}

// h2Dial makes one HTTP/2 connection: h2c, or over mutual TLS to a meshed endpoint.
type h2Dial struct {
	tls        *h2Transports // nil: h2c (h2cTransports)
	maxStreams int           // the cluster's streams per connection, which size its window
}

// socketRefKey carries a *socketRef into a dial, which newH2Socket fills in.
type socketRefKey struct{}

type socketRef struct{ w *FlushBehind }

// dial returns the connection and its socket's writer (nil if it has none).
func (d h2Dial) dial(ctx context.Context, addr string, connectTimeout time.Duration) (*http.ClientConn, *FlushBehind, error) {
	ref := &socketRef{}
	ctx = context.WithValue(ctx, socketRefKey{}, ref)
	var cc *http.ClientConn
	var err error
	if d.tls == nil {
		dctx, cancel := context.WithTimeout(ctx, connectTimeout)
		cc, err = h2cTransports.get(d.maxStreams).NewClientConn(dctx, "http", addr)
		cancel()
	} else {
		// The TCP connect keeps the connect timeout and the handshake gets its own budget
		// (dialH2TLS, meshtls.go), so the context is not cut to the connect timeout here.
		cc, err = d.tls.get(d.maxStreams).NewClientConn(context.WithValue(ctx, dialTimeoutKey{}, connectTimeout), "https", addr)
	}
	if err != nil {
		return nil, nil, err
	}
	return cc, ref.w, nil
}

// h2DialFor picks how connections to h, carrying up to maxStreams streams, are made:
// mutual TLS when h is meshed and the sidecar has a workload identity.
func (c *Cluster) h2DialFor(h *Host, maxStreams int) h2Dial {
	d := h2Dial{maxStreams: maxStreams}
	if c.mgr == nil || !h.Meshed() {
		return d
	}
	if st := c.mgr.meshTLS.Load(); st != nil {
		d.tls = st.h2t
	}
	return d
}

// done notes a stream's end on c. A connection left without streams is closed once it
// has been idle for idle (the cluster's idle timeout; 0: never), whether or not another
// request comes for the host.
func (p *h2pool) done(c *h2conn, idle time.Duration) {
	p.mu.Lock()
	c.lastUsed = time.Now()
	c.streams--
	closeIt := p.closed && c.streams == 0
	if c.streams == 0 && idle > 0 && !c.reaping && !closeIt {
		c.reaping = true
		time.AfterFunc(idle, func() { p.reap(c, idle) })
	}
	var gone *Cluster
	if closeIt {
		gone = p.dropLocked(c)
	}
	p.wakeLocked()
	p.mu.Unlock()
	if closeIt {
		closeH2Conn(c.cc)
		release(gone)
	}
}

// reap closes c if it has had no stream for idle, or looks again when it could have.
func (p *h2pool) reap(c *h2conn, idle time.Duration) {
	p.mu.Lock()
	c.reaping = false
	if c.streams > 0 {
		p.mu.Unlock()
		return // its last stream's end arms the next look
	}
	if left := idle - time.Since(c.lastUsed); left > 0 {
		c.reaping = true
		time.AfterFunc(left, func() { p.reap(c, idle) })
		p.mu.Unlock()
		return
	}
	gone := p.dropLocked(c)
	p.mu.Unlock()
	closeH2Conn(c.cc)
	release(gone)
}

// closeIdle closes connections without streams; with gone, the host left its cluster and
// the others close as their last stream ends.
func (p *h2pool) closeIdle(gone bool) {
	var slots []*Cluster
	var closing []*http.ClientConn
	p.mu.Lock()
	p.closed = p.closed || gone
	live := p.conns[:0]
	for _, c := range p.conns {
		if c.streams == 0 {
			closing = append(closing, c.cc)
			slots = append(slots, c.slot)
			c.slot = nil
		} else {
			live = append(live, c)
		}
	}
	clear(p.conns[len(live):])
	p.conns = live
	p.mu.Unlock()
	// Closed after p.mu: Close runs the connection's state hook, which takes p.mu (a
	// deadlock an EDS update removing an HTTP/2 endpoint hit in CI's race run).
	for _, cc := range closing {
		closeH2Conn(cc)
	}
	for _, cl := range slots {
		release(cl)
	}
}

// conns reports how many HTTP/2 connections the host has open (tests and stats).
func (p *h2pool) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// H2Conns reports how many HTTP/2 connections the sidecar holds to h.
func (h *Host) H2Conns() int { return h.h2.count() }

// roundTripH2 sends req to h over HTTP/2 and returns the response with its headers read;
// the body streams, with the response's trailers in resp.Trailer once it has been read to
// EOF. deadline (zero for none) bounds the exchange including the body.
func (c *Cluster) roundTripH2(ctx context.Context, req *Request, h *Host, deadline time.Time) (*http.Response, error) {
	cc := c.cfg.Load()
	maxStreams := int(cc.MaxStreamsPerConn)
	if maxStreams <= 0 {
		maxStreams = config.DefaultMaxStreamsPerConn
	}
	maxConns := min(MaxH2ConnsPerHost, max(int(cc.Limits.MaxConnections), 1))
	var cancel context.CancelFunc
	if deadline.IsZero() {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithDeadline(ctx, deadline)
	}
	slots := h.h2.tokens(maxStreams, maxConns)
	select {
	case slots <- struct{}{}:
	case <-ctx.Done():
		cancel()
		return nil, ctx.Err()
	}
	release := func() { <-slots }
	dial := c.h2DialFor(h, maxStreams)
	for try := 0; ; try++ {
		conn, err := h.h2.conn(ctx, c, dial, h.Address, maxStreams, maxConns, cc.IdleTimeout, cc.ConnectTimeout)
		if err != nil {
			release()
			cancel()
			return nil, err
		}
		hr, err := h2Request(ctx, req, h.Address, conn.w)
		if err != nil {
			h.h2.done(conn, cc.IdleTimeout)
			release()
			cancel()
			return nil, err
		}
		resp, err := conn.cc.RoundTrip(hr)
		if err == nil {
			h.h2.settle(conn)
			resp.Body = &h2body{rc: resp.Body, end: func() {
				cancel()
				h.h2.done(conn, cc.IdleTimeout)
				release()
			}}
			return resp, nil
		}
		h.h2.done(conn, cc.IdleTimeout)
		if ctx.Err() != nil {
			release()
			cancel()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, context.DeadlineExceeded
			}
			return nil, ctx.Err()
		}
		if refusedStream(err) && try < maxRefusedRetries && req.Body == nil {
			// Not processed (RFC 9113 §8.7): a new connection's first requests go out before
			// the peer's SETTINGS say how many streams it takes, and those past its limit are
			// refused. Sent again, as net/http's own transport does.
			continue
		}
		if conn.cc.Err() != nil {
			// The connection died under the request (the peer closed it while idle, or
			// sent GOAWAY): as for HTTP/1.1's stale connections, a request that can be
			// sent again goes once more on another connection; otherwise it failed before
			// a response, a reset.
			if try == 0 && req.Body == nil {
				continue
			}
			err = &staleConnError{err}
		}
		release()
		cancel()
		return nil, err
	}
}

// h2Request builds the HTTP/2 request for req. Its trailers are req.Trailer, read when
// the body has been sent.
func h2Request(ctx context.Context, req *Request, addr string, w *FlushBehind) (*http.Request, error) {
	u := &url.URL{Scheme: "http", Host: addr}
	path, query, _ := strings.Cut(req.URI, "?")
	u.RawQuery = query
	if strings.HasPrefix(path, "//") || !strings.HasPrefix(path, "/") {
		p, err := url.PathUnescape(path)
		if err != nil {
			return nil, err
		}
		u.Path, u.RawPath = p, path
	} else {
		u.Opaque = path
	}
	hr := &http.Request{Method: req.Method, URL: u, Host: req.Host, Header: req.Header, Proto: "HTTP/2.0",
		ProtoMajor: 2, Trailer: req.Trailer}
	hr = hr.WithContext(ctx)
	switch {
	case req.BodyBytes != nil:
		hr.Body, hr.ContentLength = io.NopCloser(bytes.NewReader(req.BodyBytes)), int64(len(req.BodyBytes))
	case req.Body != nil && req.ContentLength != 0:
		hr.Body, hr.ContentLength = io.NopCloser(req.Body), req.ContentLength
	default:
		hr.Body = http.NoBody
	}
	if w != nil && hr.Body != http.NoBody {
		hr.Body = newGatedBody(ctx, hr.Body, w)
	}
	return hr, nil
}

// refusedStream reports whether err is the peer's RST_STREAM(REFUSED_STREAM). net/http's
// HTTP/2 error types are unexported: its message names the code.
func refusedStream(err error) bool {
	return err != nil && strings.Contains(err.Error(), "REFUSED_STREAM")
}
