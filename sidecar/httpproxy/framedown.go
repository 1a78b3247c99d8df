package httpproxy

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The caller's side of the frame relay (frames.go): one connection, its streams, and the
// upstream connections it opened.

// fconn is a caller's connection on the relay. mu guards everything below it, the
// streams and the upstream connections (fup) included: the caller's reader and each
// upstream's reader take it in turn.
type fconn struct {
	l   *Listener
	nc  net.Conn // counts its close (countedConn)
	br  *bufio.Reader
	rec *frameRecorder
	rd  *http2.Framer
	lim *config.HTTPLimits
	// peer is the caller's verified mutual TLS identity as a principal ("" for h2c)
	peer string
	// remote is the caller's address, as each request's RemoteAddr (made once)
	remote string

	mu       sync.Mutex
	out      frameOut
	streams  map[uint32]*fstream
	ups      map[*upstream.Host]*fup
	lastID   uint32 // the highest stream the caller opened
	sendWin  int64  // the caller's connection window for the relay's DATA
	peerInit int64  // the caller's SETTINGS_INITIAL_WINDOW_SIZE
	held     int64  // caller DATA bytes not yet returned as connection window
	returned int64  // connection window returned but not yet sent (batched)
	kept     int64  // request bytes kept for retries on all streams
	goaway   bool   // GOAWAY sent: streams above lastID are refused
	acked    bool   // the caller has ACKed the relay's first SETTINGS
	closed   bool
	idleAt   *time.Timer
	timer    *time.Timer // the streams' deadlines and back-offs (fconn.arm)
	timerAt  time.Time   // when it fires; zero: not armed
	sweepAt  time.Time   // when the timer next sweeps the upstream connections (sweepUps)
	dirty    []*fup      // upstream connections with frames queued
	free     []*fstream  // ended streams kept for the next ones
}

// frameMaxKept bounds the request bodies one connection keeps for retries (each stream
// keeps at most maxReplayBody, as the goroutine path's replayTee).
const frameMaxKept = 4 << 20

// serveFrames serves an h2c connection whose preface is buffered in br. It returns when
// the connection has closed, or at once after handing it to net/http's server.
func (l *Listener) serveFrames(cc *countedConn, br *bufio.Reader) {
	lim := l.lim()
	f := &fconn{l: l, nc: cc, br: br, lim: lim, streams: map[uint32]*fstream{}, ups: map[*upstream.Host]*fup{},
		sendWin: 65535, peerInit: 65535, remote: cc.RemoteAddr().String()}
	f.out.init(cc, cc.Conn, &f.mu)
	f.peer = framePeer(cc.Conn)
	if !l.frames.add(f) {
		cc.Close() // the listener drains
		return
	}
	if lim.HeadTimeout > 0 {
		_ = cc.SetReadDeadline(time.Now().Add(lim.HeadTimeout))
	}
	if p, err := br.Peek(len(http2.ClientPreface)); err != nil || string(p) != http2.ClientPreface {
		l.framesToServer(f, cc, br, nil, true) // net/http says what is wrong with it
		return
	}
	_, _ = br.Discard(len(http2.ClientPreface))
	f.rec = &frameRecorder{r: br, on: true, buf: []byte(http2.ClientPreface)}
	f.rd = http2.NewFramer(nil, f.rec)
	f.rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	f.rd.MaxHeaderListSize = uint32(lim.MaxHeadBytes)
	f.rd.SetMaxReadFrameSize(16384) // the relay advertises the default: larger is a FRAME_SIZE_ERROR
	f.rd.SetReuseFrames()           // a frame is done with before the next is read (what is kept is copied)
	// The first SETTINGS promises nothing net/http's server would not (frames.go): the
	// default windows and frame size, fewer streams.
	_ = f.out.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: frameMaxStreams},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(lim.MaxHeadBytes)})
	if f.out.flush(true) != nil {
		l.frames.remove(f)
		cc.Close()
		return
	}
	var owed []http2.Frame // answers owed to frames read before the first request
	for {
		mark := len(f.rec.buf)
		fr, err := f.rd.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) || errors.Is(err, http2.ErrFrameTooLarge) {
				l.framesToServer(f, cc, br, f.rec.buf, f.acked) // let net/http answer what it finds wrong
				return
			}
			f.flushAll() // a GOAWAY from a drain
			l.frames.remove(f)
			cc.Close()
			return
		}
		if len(f.rec.buf) > frameMaxUndecided {
			l.framesToServer(f, cc, br, f.rec.buf, f.acked)
			return
		}
		switch fr := fr.(type) {
		case *http2.SettingsFrame:
			if fr.IsAck() {
				f.rec.buf = f.rec.buf[:mark] // the ACK of the relay's own SETTINGS
				f.acked = true
				continue
			}
			owed = append(owed, settingsCopy(fr))
		case *http2.PingFrame:
			owed = append(owed, &http2.PingFrame{FrameHeader: fr.FrameHeader, Data: fr.Data})
		case *http2.WindowUpdateFrame:
			if fr.StreamID == 0 {
				f.sendWin += int64(fr.Increment)
			}
		case *http2.PriorityFrame:
		case *http2.MetaHeadersFrame:
			r, te, ok := f.request(fr)
			if ok && l.inbound && !l.appSeen.Load() {
				l.probeApp(r)
			}
			var route *config.Route
			if ok {
				route = l.frameable(r)
			}
			if route == nil || !l.frameRoom(route) {
				l.framesToServer(f, cc, br, f.rec.buf, f.acked)
				return
			}
			f.mu.Lock()
			drained := f.goaway
			f.mu.Unlock()
			if drained { // a drain sent GOAWAY (last stream 0): the request was not processed
				l.frames.remove(f)
				cc.Close()
				return
			}
			f.rec.on, f.rec.buf = false, nil
			_ = cc.SetReadDeadline(time.Time{})
			l.frames.total.Add(1)
			f.decided(owed)
			f.mu.Lock()
			f.open(fr, r, te, route)
			f.mu.Unlock()
			f.flushAll()
			f.loop()
			return
		default:
			l.framesToServer(f, cc, br, f.rec.buf, f.acked)
			return
		}
	}
}

// framesToServer hands the connection to net/http's HTTP/2 server with what the relay
// read from it (its preface included) replayed first.
func (l *Listener) framesToServer(f *fconn, cc *countedConn, br *bufio.Reader, read []byte, acked bool) {
	l.frames.remove(f)
	f.mu.Lock()
	drained := f.goaway // a drain reached it first: it sent GOAWAY
	f.mu.Unlock()
	if drained {
		f.flushAll()
		cc.Close()
		return
	}
	_ = cc.SetReadDeadline(time.Time{})
	l.h2.handoff(&replayConn{peekedConn: &peekedConn{Conn: cc, r: br, w: upstream.NewFlushBehind(cc.Conn, cc).WithWriteTimeout(frameWriteTimeout)}, replay: read, acked: acked})
}

func settingsCopy(f *http2.SettingsFrame) http2.Frame {
	c := &settingsFrame{}
	_ = f.ForeachSetting(func(s http2.Setting) error { c.s = append(c.s, s); return nil })
	return c
}

// settingsFrame is a SETTINGS frame's values, kept after the framer reuses its buffer.
type settingsFrame struct {
	http2.FrameHeader
	s []http2.Setting
}

// decided starts relaying: the caller's SETTINGS and PINGs read so far are applied and
// answered, and the relay's own windows opened.
func (f *fconn) decided(owed []http2.Frame) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range owed {
		switch o := o.(type) {
		case *settingsFrame:
			f.applySettings(o.s)
		case *http2.PingFrame:
			_ = f.out.fr.WritePing(true, o.Data)
		}
	}
	_ = f.out.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: frameStreamWindow})
	_ = f.out.fr.WriteWindowUpdate(0, frameConnWindow-65535)
	f.out.dirty = true
}

func (f *fconn) applySettings(ss []http2.Setting) {
	for _, s := range ss {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			d := int64(s.Val) - f.peerInit
			f.peerInit = int64(s.Val)
			for _, st := range f.streams {
				st.dnWin += d
			}
		case http2.SettingMaxFrameSize:
			f.out.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			f.out.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
	}
	_ = f.out.fr.WriteSettingsAck()
	f.out.dirty = true
	for _, st := range f.streams {
		st.pumpResp()
	}
}

// loop reads the caller's frames until the connection ends, then ends what it carried.
func (f *fconn) loop() {
	f.serve()
	// Not deferred: a panic under f.mu would deadlock in shutdown instead of crashing
	// with its trace.
	f.shutdown()
}

func (f *fconn) serve() {
	for {
		fr, err := f.rd.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				f.mu.Lock()
				if s := f.streams[se.StreamID]; s != nil {
					s.callerReset(false)
				} else if se.StreamID > f.lastID && se.StreamID%2 == 1 {
					f.lastID = se.StreamID // a malformed request: refused, but its ID is used
				}
				_ = f.out.fr.WriteRSTStream(se.StreamID, se.Code)
				f.out.dirty = true
				f.mu.Unlock()
				f.flushAll()
				continue
			}
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &ce):
				f.fail(http2.ErrCode(ce))
			case errors.Is(err, http2.ErrFrameTooLarge): // past the 16 KiB advertised; not read
				f.fail(http2.ErrCodeFrameSize)
			}
			return
		}
		f.mu.Lock()
		if !f.frame(fr) {
			f.mu.Unlock()
			f.flushAll()
			return
		}
		f.mu.Unlock()
		if f.br.Buffered() == 0 { // the batch is read: what it caused leaves now
			f.flushAll()
		}
	}
}

// frame handles one frame from the caller; false ends the connection.
func (f *fconn) frame(fr http2.Frame) bool {
	switch fr := fr.(type) {
	case *http2.MetaHeadersFrame:
		if s := f.streams[fr.StreamID]; s != nil {
			s.callerTrailers(fr)
			return true
		}
		if fr.StreamID <= f.lastID || fr.StreamID%2 == 0 {
			f.goAway(http2.ErrCodeProtocol)
			return false
		}
		r, te, ok := f.request(fr)
		var route *config.Route
		if ok && !f.goaway && len(f.streams) < frameMaxStreams {
			route = f.l.frameable(r)
		}
		switch {
		case !ok:
			f.lastID = fr.StreamID
			_ = f.out.fr.WriteRSTStream(fr.StreamID, http2.ErrCodeProtocol)
			f.out.dirty = true
		case f.goaway || len(f.streams) >= frameMaxStreams:
			_ = f.out.fr.WriteRSTStream(fr.StreamID, http2.ErrCodeRefusedStream)
			f.out.dirty = true
			f.lastID = fr.StreamID // its DATA still to come is for a closed stream
		case route == nil:
			// net/http serves what the relay does not: this request is refused unprocessed,
			// and the connection drains (the GOAWAY names the stream before it), so the
			// caller sends it again on a new one.
			f.refuseStream(fr.StreamID)
			f.lastID = fr.StreamID
			if len(f.streams) == 0 {
				f.lingerClose()
			}
		default:
			f.open(fr, r, te, route)
		}
	case *http2.DataFrame:
		return f.data(fr)
	case *http2.RSTStreamFrame:
		if s := f.streams[fr.StreamID]; s != nil {
			s.callerReset(true)
		}
	case *http2.SettingsFrame:
		if !fr.IsAck() {
			var ss []http2.Setting
			_ = fr.ForeachSetting(func(s http2.Setting) error { ss = append(ss, s); return nil })
			f.applySettings(ss)
		}
	case *http2.PingFrame:
		if !fr.IsAck() {
			_ = f.out.fr.WritePing(true, fr.Data)
			f.out.dirty = true
		}
	case *http2.WindowUpdateFrame:
		if fr.StreamID == 0 {
			f.sendWin += int64(fr.Increment)
			if f.sendWin > maxWindow {
				f.goAway(http2.ErrCodeFlowControl)
				return false
			}
			for _, s := range f.streams {
				s.pumpResp()
			}
		} else if s := f.streams[fr.StreamID]; s != nil {
			s.dnWin += int64(fr.Increment)
			if s.dnWin > maxWindow {
				s.reset(http2.ErrCodeFlowControl, "the caller's window update passed 2^31-1")
				return true
			}
			s.pumpResp()
		}
	case *http2.GoAwayFrame:
		f.goaway = true
		if len(f.streams) == 0 {
			f.lingerClose()
		}
	}
	return true
}

// data takes a DATA frame of a request body.
func (f *fconn) data(fr *http2.DataFrame) bool {
	n := int64(fr.Length)
	f.held += n
	if f.held > frameConnWindow {
		f.goAway(http2.ErrCodeFlowControl)
		return false
	}
	s := f.streams[fr.StreamID]
	if s == nil || s.bodyEnd {
		f.giveBack(nil, n)
		if fr.StreamID > f.lastID {
			f.goAway(http2.ErrCodeProtocol)
			return false
		}
		_ = f.out.fr.WriteRSTStream(fr.StreamID, http2.ErrCodeStreamClosed)
		f.out.dirty = true
		return true
	}
	f.giveBack(nil, n-int64(len(fr.Data()))) // padding
	s.callerData(fr.Data(), fr.StreamEnded())
	return true
}

// giveBack returns n bytes of window to the caller: the connection's, and s's while its
// body may go on. Small returns are batched.
func (f *fconn) giveBack(s *fstream, n int64) {
	if n <= 0 {
		return
	}
	f.held -= n
	if s != nil && !s.bodyEnd {
		s.unacked += n
		if s.unacked >= frameStreamWindow/8 {
			_ = f.out.fr.WriteWindowUpdate(s.id, uint32(s.unacked))
			s.unacked = 0
			f.out.dirty = true
		}
	}
	f.returned += n
	if f.returned >= frameConnWindow/8 {
		_ = f.out.fr.WriteWindowUpdate(0, uint32(f.returned))
		f.returned = 0
		f.out.dirty = true
	}
}

// goAway sends GOAWAY: no stream above the last the caller opened will be served.
// refuseStream refuses stream id unprocessed (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7)
// and drains the connection under a GOAWAY naming f.lastID, so the caller sends the
// request again on a new connection. f.mu is held.
func (f *fconn) refuseStream(id uint32) {
	_ = f.out.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
	f.out.dirty = true
	f.goAway(http2.ErrCodeNo)
	f.l.frames.refused.Add(1)
}

func (f *fconn) goAway(code http2.ErrCode) {
	if f.goaway && code == http2.ErrCodeNo {
		return
	}
	f.goaway = true
	_ = f.out.fr.WriteGoAway(f.lastID, code, nil)
	f.out.dirty = true
}

// fail ends the connection on a connection error.
func (f *fconn) fail(code http2.ErrCode) {
	f.mu.Lock()
	f.goAway(code)
	f.mu.Unlock()
	f.flushAll()
}

// flushAll writes what is queued to every upstream, then to the caller: what a caller's
// frames made goes on upstream before the replies the sidecar owes the caller itself (PING
// and SETTINGS acknowledgements, WINDOW_UPDATEs). flushFromUpstream is the other order,
// for what an upstream's frames made: a response goes to its caller before the PING
// acknowledgement the upstream gets, so the write that wakes the upstream — which may take
// the CPU at that write's return — is not in front of the response.
func (f *fconn) flushAll() { f.flush(false) }

// flushFromUpstream writes what is queued to the caller, then to every upstream.
func (f *fconn) flushFromUpstream() { f.flush(true) }

// flush writes what is queued to the caller and to every upstream: toward the caller it
// waits for the socket, toward upstreams it does not (frameOut). A write error closes the
// connection it failed on, whose reader ends its streams.
func (f *fconn) flush(callerFirst bool) {
	if callerFirst {
		f.flushCaller()
	}
	f.mu.Lock()
	ups := f.dirty
	f.dirty = nil
	for _, u := range ups {
		u.dirty = false
	}
	f.mu.Unlock()
	for _, u := range ups {
		_ = u.out.flush(false)
	}
	if !callerFirst {
		f.flushCaller()
	}
}

func (f *fconn) flushCaller() { _ = f.out.flush(true) }

// shutdown ends every stream when the caller's connection has ended and closes it and
// its upstream connections.
func (f *fconn) shutdown() {
	f.mu.Lock()
	f.closed = true
	for _, s := range f.streams {
		s.callerReset(true)
	}
	for _, u := range f.ups {
		u.close()
	}
	if f.idleAt != nil {
		f.idleAt.Stop()
	}
	if f.timer != nil {
		f.timer.Stop()
	}
	f.mu.Unlock()
	f.flushAll()
	f.nc.Close()
	f.l.frames.remove(f)
}

// streamEnded forgets s; a connection without streams starts its idle timeout, and one
// draining without streams closes.
func (f *fconn) streamEnded(s *fstream) {
	delete(f.streams, s.id)
	if len(f.streams) > 0 {
		return
	}
	if f.goaway || f.l.draining.Load() {
		f.goAway(http2.ErrCodeNo)
		f.lingerClose()
		return
	}
	if d := f.lim.IdleTimeout; d > 0 {
		if f.idleAt == nil {
			f.idleAt = time.AfterFunc(d, f.idle)
		} else {
			f.idleAt.Reset(d)
		}
	}
}

// idle closes a connection that has carried no stream for the idle timeout.
func (f *fconn) idle() {
	f.mu.Lock()
	if len(f.streams) > 0 || f.closed {
		f.mu.Unlock()
		return
	}
	f.goAway(http2.ErrCodeNo)
	f.lingerClose()
	f.mu.Unlock()
	f.flushAll()
}

// lingerClose ends a connection that has sent GOAWAY and has no stream left: it reads
// (and answers) what the caller still sends for frameLinger, then closes, so the caller
// reads the GOAWAY and the resets before the connection goes, rather than a TCP reset for
// data the relay never read.
func (f *fconn) lingerClose() {
	_ = f.nc.SetReadDeadline(time.Now().Add(frameLinger))
}

// maxWindow is the largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const maxWindow = 1<<31 - 1

const frameLinger = time.Second
