package httpproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/tlsrec"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The HTTP/2 frame relay (issue 15's gRPC latency): a prior-knowledge h2c connection whose
// requests go to HTTP/2 upstreams on event-loop-safe routes is served frame by frame
// instead of by net/http's HTTP/2 server and client. One goroutine reads the caller's
// connection and one reads each upstream connection; a stream costs no goroutine, no
// http.ResponseWriter and no channel hand-off. HEADERS are decoded once, routed with the
// code both HTTP/1 paths use (route matching, header edits, load balancing, circuit
// breakers, outlier detection, retries and their back-off, timeouts, stats, telemetry,
// MeshPolicy), and re-encoded for the other side; DATA is relayed with flow control tied
// window for window; RST_STREAM goes both ways. Each side's frames leave in one write(2)
// per batch read from the other side.
//
// What the relay does not implement stays with net/http (h1.go's h2Server), decided at the
// connection's first request: its HEADERS are read before anything is answered but the
// relay's SETTINGS, and a connection whose first request the relay would not take is
// handed to net/http with every frame read so far replayed (frameRecorder). A later
// request on a relayed connection that the relay would not take is refused with
// REFUSED_STREAM under a GOAWAY (RFC 9113 §8.7: not processed, safe to retry), so the
// caller sends it again on a new connection, which net/http serves.

// Limits of the relay, per caller connection.
const (
	// frameStreamWindow and frameConnWindow are the flow-control windows the relay grants
	// each side (as upstream/h2.go grants upstreams): what it may hold of a request the
	// upstream has not taken yet, or of a response the caller has not, per stream and per
	// connection. The stream window is Envoy's edge value (64 KiB); the connection's holds
	// every stream's at once (frameMaxStreams of them), so streams whose far side reads
	// slowly — a client-streaming RPC whose handler is behind — never use up the window
	// the connection's other streams need: the relay returns connection window only for
	// bytes it has passed on, and with a smaller connection window a few held streams
	// would stall every other stream's body (net/http's server, and Envoy past 16 held
	// streams, do that). What is held per caller connection is bounded by the same
	// product: 6.25 MiB of request bodies, and as much of responses.
	frameStreamWindow = 64 << 10
	frameConnWindow   = frameMaxStreams * frameStreamWindow
	// frameMaxStreams is SETTINGS_MAX_CONCURRENT_STREAMS toward callers, and net/http's
	// server a connection may be handed to is given the same (h1.go): the relay's first
	// SETTINGS must not promise more than that server keeps.
	frameMaxStreams = 100
	// frameMaxUndecided bounds what is read and kept for a replay before the first request.
	frameMaxUndecided = 64 << 10
	frameWriteTimeout = upstream.H2WriteTimeout // a caller or upstream that stops reading is cut
	// frameUpQueued bounds the request bodies queued for an upstream whose socket takes
	// nothing (frameOut.blocked); the streams keep the rest, within their windows.
	frameUpQueued = 64 << 10
)

// frameOut is one side's output: frames are appended under the owner's lock and written
// by whichever goroutine flushes, one write(2) for all that is queued.
//
// One goroutine writes at a time (writing), and it writes until the queue is empty, so
// what another goroutine queues meanwhile goes out with it. A flush either waits for the
// peer (toward the caller) or does not (toward upstreams): no goroutine of the relay waits
// for an upstream's socket. An upstream's reader that did would hold a response that
// upstream sends behind a PING until the PING's ACK got into a socket the upstream is not
// reading (an upload filled it), and the caller's reader would hold every stream of the
// caller's connection, to every upstream, behind one that stopped reading — in both cases
// until the write timeout cut the connection. A flush that does not wait writes what the
// socket takes at once and leaves the rest to a goroutine of its own (finish); while that
// goroutine waits (blocked), request bodies bound for the upstream stay with their streams
// (fstream.pumpReq) and their window is not given back to the caller, and once the socket
// has taken everything the goroutine calls resume, which sends them on.
type frameOut struct {
	nc      net.Conn
	w       *connio.Writer // raw write(2), outside the runtime's syscall bracket (connio)
	fr      *http2.Framer  // writes into buf
	buf     bytes.Buffer
	spare   bytes.Buffer
	mu      *sync.Mutex // the owner's lock: buf, spare, writing, dirty and err are under it
	idle    sync.Cond   // on mu: signalled when writing ends
	room    func() int  // a TLS connection's socket: bytes it queues without waiting (nil: not TLS)
	writing bool        // a goroutine is writing the queue
	blocked bool        // finish is waiting for the socket to take bytes
	resume  func()      // called by finish, without mu, once the socket took everything (nil: none)
	enc     *hpack.Encoder
	eb      bytes.Buffer
	dirty   bool
	err     error
	stall   connio.WriteDeadline // frameWriteTimeout: a peer that stops reading is cut
	// the peer's settings
	maxFrame uint32
}

// init makes o write to nc (raw is nc's socket); mu is the owner's lock.
func (o *frameOut) init(nc, raw net.Conn, mu *sync.Mutex) {
	o.nc = nc
	o.mu = mu
	o.idle.L = mu
	o.w = connio.NewWriter(raw)
	if tc, ok := nc.(*tls.Conn); ok {
		if s, ok := tc.NetConn().(interface{ Room() int }); ok {
			o.room = s.Room
		}
	}
	o.stall.Timeout = frameWriteTimeout
	o.fr = http2.NewFramer(&o.buf, nil)
	o.enc = hpack.NewEncoder(&o.eb)
	o.maxFrame = 16384
}

// headers queues a header block (HEADERS, then CONTINUATION frames as the peer's frame
// size requires). The caller holds the owner's lock.
func (o *frameOut) headers(id uint32, fields []hpack.HeaderField, end bool) {
	o.eb.Reset()
	for _, f := range fields {
		_ = o.enc.WriteField(f)
	}
	block := o.eb.Bytes()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), int(o.maxFrame))
		frag := block[:n]
		block = block[n:]
		if first {
			_ = o.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0})
			first = false
		} else {
			_ = o.fr.WriteContinuation(id, len(block) == 0, frag)
		}
	}
	o.dirty = true
}

// data queues p as DATA frames of at most the peer's frame size.
func (o *frameOut) data(id uint32, p []byte, end bool) {
	for {
		n := min(len(p), int(o.maxFrame))
		_ = o.fr.WriteData(id, end && n == len(p), p[:n])
		p = p[n:]
		if len(p) == 0 {
			break
		}
	}
	o.dirty = true
}

// flush writes what is queued; the owner's lock is not held by the caller. With wait it
// returns once what was queued has been written (a write error: when the connection has
// failed); without, once the socket has taken what it takes at once, the rest left to the
// goroutine writing. A write error closes the connection, whose reader then ends.
func (o *frameOut) flush(wait bool) error {
	o.mu.Lock()
	for o.writing {
		if !wait { // the writer takes what is queued before it stops
			o.dirty = false
			o.mu.Unlock()
			return nil
		}
		o.idle.Wait()
	}
	return o.write(wait)
}

// write writes the queue until it is empty, with o.mu held and no other writer; it
// returns with o.mu unlocked.
func (o *frameOut) write(wait bool) error {
	o.writing = true
	for o.buf.Len() > 0 && o.err == nil {
		b := o.buf // the framer writes to &o.buf, which now holds the spare's storage
		o.buf, o.spare = o.spare, bytes.Buffer{}
		o.buf.Reset()
		o.dirty = false
		o.mu.Unlock()
		o.stall.Arm(o.nc)
		var err error
		if wait {
			err = o.w.WriteAll(b.Bytes())
		} else if o.room != nil && tlsFits(b.Len(), o.room()) {
			// crypto/tls cannot write without waiting, but the socket below it queues
			// this much at once: written here, as the caller's requests are on every hop.
			err = o.w.WriteAll(b.Bytes())
		} else {
			var n int
			n, err = o.w.TryWrite(b.Bytes())
			if err == nil && n < b.Len() { // the socket is full: a goroutine waits for it
				b.Next(n)
				o.mu.Lock()
				o.blocked = true
				o.mu.Unlock()
				go o.finish(b)
				return nil
			}
		}
		b.Reset()
		o.mu.Lock()
		o.spare = b
		o.failed(err)
	}
	err := o.err
	o.dirty = false
	o.writing = false
	o.blocked = false
	o.idle.Broadcast()
	o.mu.Unlock()
	return err
}

// tlsFits reports whether n bytes of plaintext, sealed in TLS records of at most 16 KiB,
// fit in room bytes of the socket's queue (29 bytes per record covers TLS 1.2's and 1.3's
// header, explicit nonce or content type, and tag).
func tlsFits(n, room int) bool {
	return n+(n/16384+1)*29 <= room
}

// finish writes b, what the socket did not take of a flush that does not wait, then the
// rest of the queue, as the writer.
func (o *frameOut) finish(b bytes.Buffer) {
	err := o.w.WriteAll(b.Bytes())
	b.Reset()
	o.mu.Lock()
	o.spare = b
	o.failed(err)
	if o.write(true) == nil && o.resume != nil {
		o.resume()
	}
}

// failed records a write error, with o.mu held, and closes the connection.
func (o *frameOut) failed(err error) {
	if err != nil && o.err == nil {
		o.err = err
		_ = o.nc.Close()
	}
}

// frameRecorder keeps every byte the relay reads before it decides to serve a
// connection, so a connection it does not take can be replayed to net/http.
type frameRecorder struct {
	r   io.Reader
	buf []byte
	on  bool
}

func (f *frameRecorder) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.on && n > 0 {
		f.buf = append(f.buf, p[:n]...)
	}
	return n, err
}

// replayConn is a connection handed to net/http after the relay read its start: Read
// returns replay first. Unless the relay saw it already, the caller's ACK of the relay's
// SETTINGS is still to come: it is dropped on its way to net/http, whose server takes an
// ACK of SETTINGS it never sent for a protocol error.
type replayConn struct {
	*peekedConn
	replay []byte
	acked  bool   // the ACK has been dropped (or was seen before the hand-off)
	left   int    // payload bytes of the current frame still to pass through
	head   []byte // a frame header being read
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.replay) > 0 {
		n := copy(p, c.replay)
		c.replay = c.replay[n:]
		return n, nil
	}
	if c.acked {
		return c.peekedConn.Read(p)
	}
	if c.left > 0 {
		n, err := c.peekedConn.Read(p[:min(len(p), c.left)])
		c.left -= n
		return n, err
	}
	var hdr [9]byte
	if _, err := io.ReadFull(c.peekedConn, hdr[:]); err != nil {
		return 0, err
	}
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	if http2.FrameType(hdr[3]) == http2.FrameSettings && http2.Flags(hdr[4]).Has(http2.FlagSettingsAck) && length == 0 {
		c.acked = true // dropped; what follows passes through
		return c.peekedConn.Read(p)
	}
	c.left = length
	c.replay = append(c.head[:0], hdr[:]...)
	c.head = c.replay
	n := copy(p, c.replay)
	c.replay = c.replay[n:]
	return n, nil
}

// frameSet is a listener's connections on the relay, for its drain.
type frameSet struct {
	mu      sync.Mutex
	conns   map[*fconn]struct{}
	gone    *sync.Cond
	closing bool          // drain has begun: no connection joins
	total   atomic.Uint64 // connections the relay took (weft_listener_frame_relay_connections_total)
	refused atomic.Uint64 // requests refused for net/http to serve (REFUSED_STREAM, GOAWAY)
}

// add registers a connection from its preface on, so a drain reaches it before its first
// request too; false once the listener drains.
func (s *frameSet) add(f *fconn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.conns == nil {
		s.conns = map[*fconn]struct{}{}
		s.gone = sync.NewCond(&s.mu)
	}
	s.conns[f] = struct{}{}
	return true
}

func (s *frameSet) remove(f *fconn) {
	s.mu.Lock()
	delete(s.conns, f)
	if s.gone != nil {
		s.gone.Broadcast()
	}
	s.mu.Unlock()
}

// drain sends GOAWAY on every connection, closes those without streams, and waits until
// the rest have closed after their last stream, or ctx ends.
func (s *frameSet) drain(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	conns := make([]*fconn, 0, len(s.conns))
	for f := range s.conns {
		conns = append(conns, f)
	}
	s.mu.Unlock()
	for _, f := range conns {
		f.mu.Lock()
		f.goAway(0)
		if len(f.streams) == 0 {
			f.lingerClose()
		}
		f.mu.Unlock()
		f.flushAll()
	}
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		if s.gone != nil {
			s.gone.Broadcast()
		}
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.conns) > 0 && ctx.Err() == nil {
		s.gone.Wait()
	}
	if len(s.conns) > 0 {
		return ctx.Err()
	}
	return nil
}

// relaysFrames reports whether an HTTP/2 connection goes to the frame relay: cleartext
// (h2c), or mutual TLS from a mesh peer (ALPN h2; MeshPolicy then sees the verified peer),
// unless the sidecar runs a goroutine per connection (--goroutine-per-connection), which
// keeps net/http's server for HTTP/2 as a fallback. TLS the capture plane terminates
// stays with net/http.
func (l *Listener) relaysFrames(nc net.Conn) bool {
	if l.proxy.opts.GoroutinePerConnection {
		return false
	}
	switch nc.(type) {
	case *tlsrec.Conn, *tls.Conn:
		return false
	}
	return true
}

// framePeer is the verified mutual TLS peer of a connection as a principal ("" for
// cleartext).
func framePeer(nc net.Conn) string {
	mc, ok := nc.(*mtlsConn)
	if !ok {
		return ""
	}
	if v, ok := mc.f.peers.Load(mc.key); ok {
		return v.(contract.SPIFFEID).String()
	}
	return ""
}

// lowerNames maps canonical header names to their HTTP/2 form, for the common ones
// (strings.ToLower allocates for every other).
var lowerNames = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept", "Accept-Encoding", "Authorization", "Cache-Control", "Content-Encoding",
		"Content-Length", "Content-Type", "Cookie", "Date", "Etag", "Grpc-Accept-Encoding", "Grpc-Encoding",
		"Grpc-Message", "Grpc-Status", "Grpc-Timeout", "Location", "Server", "Set-Cookie", "Traceparent",
		"Tracestate", "User-Agent", "Vary", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Spanid", "X-B3-Traceid",
		"X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id", "X-Weft-Peer", overloadedHeader} {
		m[k] = strings.ToLower(k)
	}
	return m
}()

// canonicalNames is lowerNames the other way, for building http.Header from HPACK fields
// (http.CanonicalHeaderKey allocates for a lower-case name).
var canonicalNames = func() map[string]string {
	m := make(map[string]string, len(lowerNames))
	for k, v := range lowerNames {
		m[v] = k
	}
	for _, k := range []string{"Content-Type", "Te", "Grpc-Status", "Grpc-Message"} {
		m[strings.ToLower(k)] = k
	}
	return m
}()

func canonicalName(k string) string {
	if v, ok := canonicalNames[k]; ok {
		return v
	}
	return http.CanonicalHeaderKey(k)
}

func lowerName(k string) string {
	if v, ok := lowerNames[k]; ok {
		return v
	}
	return strings.ToLower(k)
}
