package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The upstream side of the frame relay (frames.go). A caller's connection opens at most
// one HTTP/2 connection to each endpoint it calls and multiplexes its streams over it (as
// an Envoy worker keeps its own pool per endpoint); requests past the endpoint's stream
// limit wait for a stream to end. Every such connection holds one of its cluster's
// max_connections slots (upstream.OpenH2Conn) from before its dial until its reader ends;
// with none left, a caller connection opens no more (fstream.sendTo). Everything here runs
// under the caller connection's lock, but for dial and read, which take it.

type fup struct {
	f    *fconn
	host *upstream.Host
	c    *upstream.Cluster
	nc   net.Conn
	br   *bufio.Reader
	rd   *http2.Framer
	out  frameOut

	streams    map[uint32]*fstream
	waiting    []*fstream // for the dial, or for a stream below the limit
	nextID     uint32
	sendWin    int64
	peerInit   int64
	maxStreams int
	returned   int64     // connection window to give back (batched)
	idleSince  time.Time // when its last stream ended (zero while it has streams)
	ready      bool
	dead       bool
	goneAway   bool // no new streams: GOAWAY received, or stream IDs ran out
	dirty      bool
}

// upFor returns the caller connection's upstream connection to h, dialling one if it has
// none that takes new streams; nil if it has none and c's max_connections are all open.
func (f *fconn) upFor(h *upstream.Host, c *upstream.Cluster) *fup {
	if u := f.ups[h]; u != nil && !u.dead && !u.goneAway {
		return u
	}
	if !c.OpenH2Conn(false) {
		return nil
	}
	maxStreams := int(c.Config().MaxStreamsPerConn)
	if maxStreams <= 0 {
		maxStreams = config.DefaultMaxStreamsPerConn
	}
	u := &fup{f: f, host: h, c: c, streams: map[uint32]*fstream{}, nextID: 1, sendWin: 65535, peerInit: 65535, maxStreams: maxStreams}
	f.ups[h] = u
	if f.sweepAt.IsZero() {
		f.sweepAt = time.Now().Add(hostSweep)
	}
	f.arm(f.sweepAt) // sweepUps
	go u.dial()
	return u
}

// sendTo sends s's attempt to h on the caller connection's upstream connection to it.
// When it has none and may not open one (the cluster's max_connections are all open), a
// request no upstream has seen is refused unprocessed (refuse): the caller sends it again
// on a new connection, which the relay leaves to the goroutine path's shared pool
// (serveFrames). One that was already tried gets the pool's 503 with x-weft-overloaded,
// as on the event loop.
func (s *fstream) sendTo(h *upstream.Host) {
	ex := &s.ex
	if u := s.f.upFor(h, ex.c); u != nil {
		u.attach(s)
		return
	}
	ex.c.Stats.ConnOverflow.Add(1)
	if ex.host != nil {
		ex.c.Report(ex.host, upstream.NotSent)
		ex.host = nil
	}
	if ex.retry.attempt == 0 {
		s.refuse()
		return
	}
	lim := ex.c.Config().Limits
	s.policyReply(ex.retry.giveUp(&upstream.PoolFullError{Cluster: ex.c.Name, MaxConnections: lim.MaxConnections, HTTP2: true}, time.Now()))
}

// sweepUps closes the upstream connections without streams whose endpoint left its
// cluster (a pod gone) or that have been idle past the cluster's idle timeout, as the
// event loops' sweepHosts does for HTTP/1.1; a connection to a gone pod is otherwise held
// as long as the caller's connection. It runs on the connection's timer (tick) every
// hostSweep while there are upstream connections. f.mu is held.
func (f *fconn) sweepUps(now time.Time) {
	for _, u := range f.ups {
		if len(u.streams) > 0 || len(u.waiting) > 0 || !u.ready {
			continue
		}
		idle := u.c.Config().IdleTimeout
		if u.host.Removed() || (idle > 0 && !u.idleSince.IsZero() && now.Sub(u.idleSince) > idle) {
			u.close()
		}
	}
}

// attach sends s's request on u, or queues it.
func (u *fup) attach(s *fstream) {
	s.u, s.uid = u, 0
	if !u.ready || len(u.streams) >= u.maxStreams {
		u.waiting = append(u.waiting, s)
		return
	}
	u.send(s)
}

func (u *fup) send(s *fstream) {
	s.uid = u.nextID
	u.nextID += 2
	if u.nextID >= 1<<31 {
		u.goneAway = true
	}
	u.streams[s.uid] = s
	s.upWin = u.peerInit
	s.reqDone = s.bodyEnd && len(s.body) == 0 && s.trailers == nil
	u.out.headers(s.uid, s.fields, s.reqDone)
	u.markDirty()
	s.pumpReq()
}

func (u *fup) markDirty() {
	if !u.dirty && !u.dead {
		u.dirty = true
		u.f.dirty = append(u.f.dirty, u)
	}
}

// forget takes s's stream off u; a waiting request takes its place.
func (u *fup) forget(s *fstream) {
	delete(u.streams, s.uid)
	u.sendWaiting()
	if len(u.streams) == 0 {
		u.idleSince = time.Now()
	}
	if len(u.streams) == 0 && (u.goneAway || u.host.Removed()) {
		u.close()
	}
}

func (u *fup) sendWaiting() {
	for u.ready && !u.dead && len(u.waiting) > 0 && len(u.streams) < u.maxStreams && !u.goneAway {
		s := u.waiting[0]
		u.waiting = u.waiting[1:]
		u.send(s)
	}
	if u.goneAway && len(u.waiting) > 0 {
		w := u.waiting
		u.waiting = nil
		for _, s := range w {
			s.u = nil
			s.sendTo(s.ex.host)
		}
	}
}

func (u *fup) unwait(s *fstream) {
	for i, x := range u.waiting {
		if x == s {
			u.waiting = append(u.waiting[:i], u.waiting[i+1:]...)
			return
		}
	}
}

// giveBack returns n bytes of window to the upstream: the connection's, and s's while its
// response goes on. Small returns are batched.
func (u *fup) giveBack(s *fstream, n int64) {
	if u.dead || n <= 0 {
		return
	}
	if s != nil {
		s.upHeld -= n
		if s.uid != 0 && !s.pendEnd {
			s.upUnacked += n
			if s.upUnacked >= frameStreamWindow/8 {
				_ = u.out.fr.WriteWindowUpdate(s.uid, uint32(s.upUnacked))
				s.upUnacked = 0
				u.markDirty()
			}
		}
	}
	u.returned += n
	if u.returned >= frameConnWindow/8 {
		_ = u.out.fr.WriteWindowUpdate(0, uint32(u.returned))
		u.returned = 0
		u.markDirty()
	}
}

// dial connects, sends the connection preface and the requests waiting, then reads. The
// connection's max_connections slot is given back when it returns.
func (u *fup) dial() {
	defer u.c.ConnClosed(nil, false)
	f := u.f
	conn, err := u.c.DialH2(context.Background(), u.host)
	f.mu.Lock()
	if err != nil || f.closed || u.dead {
		if conn != nil {
			conn.Close()
		}
		if err == nil {
			err = errUpstreamReset
		}
		u.lost(err)
		f.mu.Unlock()
		f.flushAll()
		return
	}
	u.nc = conn
	u.out.init(conn, conn, &f.mu)
	u.out.resume = u.resume
	u.br = bufio.NewReaderSize(connio.NewConn(conn), 16<<10)
	u.rd = http2.NewFramer(nil, u.br)
	u.rd.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	u.rd.MaxHeaderListSize = uint32(f.lim.MaxHeadBytes)
	u.rd.SetMaxReadFrameSize(16384) // as advertised (the default)
	u.rd.SetReuseFrames()
	u.out.buf.WriteString(http2.ClientPreface)
	_ = u.out.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: frameStreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(f.lim.MaxHeadBytes)})
	_ = u.out.fr.WriteWindowUpdate(0, frameConnWindow-65535)
	u.ready = true
	u.markDirty()
	u.sendWaiting()
	f.mu.Unlock()
	f.flushAll()
	u.read()
}

// resume sends on the request bodies held while the upstream's socket took nothing
// (frameOut.blocked), once it has taken everything queued.
func (u *fup) resume() {
	f := u.f
	f.mu.Lock()
	for _, s := range u.streams {
		s.pumpReq()
	}
	f.mu.Unlock()
	f.flushAll()
}

// read takes the upstream's frames until its connection ends.
func (u *fup) read() {
	f := u.f
	for {
		fr, err := u.rd.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				f.mu.Lock()
				if s := u.streams[se.StreamID]; s != nil {
					s.upReset(se.Code) // a malformed response: as if reset
				}
				f.mu.Unlock()
				f.flushAll()
				continue
			}
			f.mu.Lock()
			u.lost(errUpstreamReset)
			f.mu.Unlock()
			f.flushAll()
			return
		}
		f.mu.Lock()
		ok := u.frame(fr)
		if !ok {
			u.lost(errUpstreamReset)
		}
		f.mu.Unlock()
		if !ok {
			f.flushAll()
			return
		}
		if u.br.Buffered() == 0 {
			f.flushFromUpstream()
		}
	}
}

// frame handles one frame from the upstream; false ends the connection.
func (u *fup) frame(fr http2.Frame) bool {
	switch fr := fr.(type) {
	case *http2.MetaHeadersFrame:
		if s := u.streams[fr.StreamID]; s != nil {
			s.upHeaders(fr)
		}
	case *http2.DataFrame:
		n := int64(fr.Length)
		s := u.streams[fr.StreamID]
		if s == nil {
			u.giveBack(nil, n)
			return true
		}
		u.giveBack(nil, n-int64(len(fr.Data()))) // padding
		s.upData(fr.Data(), fr.StreamEnded())
	case *http2.RSTStreamFrame:
		if s := u.streams[fr.StreamID]; s != nil {
			s.upReset(fr.ErrCode)
		}
	case *http2.SettingsFrame:
		if fr.IsAck() {
			return true
		}
		_ = fr.ForeachSetting(func(st http2.Setting) error {
			switch st.ID {
			case http2.SettingInitialWindowSize:
				d := int64(st.Val) - u.peerInit
				u.peerInit = int64(st.Val)
				for _, s := range u.streams {
					s.upWin += d
				}
			case http2.SettingMaxFrameSize:
				u.out.maxFrame = st.Val
			case http2.SettingMaxConcurrentStreams:
				u.maxStreams = min(u.maxStreams, int(st.Val))
			case http2.SettingHeaderTableSize:
				u.out.enc.SetMaxDynamicTableSizeLimit(st.Val)
			}
			return nil
		})
		_ = u.out.fr.WriteSettingsAck()
		u.markDirty()
		for _, s := range u.streams {
			s.pumpReq()
		}
		u.sendWaiting()
	case *http2.WindowUpdateFrame:
		if fr.StreamID == 0 {
			u.sendWin += int64(fr.Increment)
			if u.sendWin > maxWindow {
				return false // FLOW_CONTROL_ERROR: the connection is lost
			}
			for _, s := range u.streams {
				s.pumpReq()
			}
		} else if s := u.streams[fr.StreamID]; s != nil {
			s.upWin += int64(fr.Increment)
			if s.upWin > maxWindow {
				s.upReset(http2.ErrCodeFlowControl)
				return true
			}
			s.pumpReq()
		}
	case *http2.PingFrame:
		if !fr.IsAck() {
			_ = u.out.fr.WritePing(true, fr.Data)
			u.markDirty()
		}
	case *http2.GoAwayFrame:
		u.goneAway = true
		if u.f.ups[u.host] == u {
			delete(u.f.ups, u.host)
		}
		// Streams above the last one the upstream processed were not: sent again, once,
		// uncounted (RFC 9113 §6.8).
		for id, s := range u.streams {
			if id > fr.LastStreamID {
				s.upReset(http2.ErrCodeRefusedStream)
			}
		}
		u.sendWaiting()
		if len(u.streams) == 0 {
			u.close()
		}
	case *http2.PushPromiseFrame:
		return false // disabled in SETTINGS: a protocol error
	}
	return true
}

// lost ends what u carried when its connection is gone (or never came): a request that
// got no answer is failed (and retried as the policy says), one whose answer had begun is
// reset to the caller.
func (u *fup) lost(err error) {
	if u.dead {
		return
	}
	u.dead = true
	if u.f.ups[u.host] == u {
		delete(u.f.ups, u.host)
	}
	if u.nc != nil {
		u.nc.Close()
	}
	w := u.waiting
	u.waiting = nil
	for _, s := range w {
		s.u = nil
		s.attemptFailed(err)
	}
	for _, s := range u.streams {
		if s.gotHead {
			s.upFailed(http2.ErrCodeInternal)
		} else {
			s.attemptFailed(err)
		}
	}
}

// close closes u; its reader then finds the streams it still had (none, when called from
// forget) and ends them.
func (u *fup) close() {
	if u.f.ups[u.host] == u {
		delete(u.f.ups, u.host)
	}
	if u.nc != nil {
		u.nc.Close()
	} else {
		u.dead = true
	}
}
