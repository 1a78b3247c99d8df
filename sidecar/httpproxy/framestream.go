package httpproxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// One request on the frame relay (frames.go): the exchange policy the event loop follows
// (retrystate.go), driven by frames. Every method runs under the connection's lock.

type fstream struct {
	f  *fconn
	id uint32
	ex exchange // route, cluster, retry state, host, hash, status, telemetry (loop.go)

	grpc   bool
	fields []hpack.HeaderField // the upstream request's header block, the same every attempt

	// the request body: body[sent:] is still to go upstream on this attempt; all of it is
	// kept (for a retry) while keep holds, else only what is unsent
	body     []byte
	sent     int
	acked    int // of body, bytes whose window went back to the caller
	keep     bool
	dropped  bool // bytes were dropped: a retry cannot resend the body
	bodyEnd  bool
	declared int64 // content-length, -1: none
	recvd    int64
	trailers []hpack.HeaderField // the caller's request trailers
	unacked  int64               // stream window to return to the caller (batched)
	reqDone  bool                // the request's end went upstream on this attempt

	// the current attempt
	u       *fup
	uid     uint32
	upWin   int64     // send window on the upstream stream
	due     time.Time // the attempt's deadline, or when a retry's back-off ends; zero: none
	backoff bool      // due is a back-off's end

	// the response
	gotHead   bool
	dnWin     int64 // the caller's window on this stream
	pend      []byte
	pendEnd   bool
	pendTr    []hpack.HeaderField
	respLen   int64 // the response's content-length, -1: none
	upHeld    int64 // response bytes taken from the upstream and not yet returned as window
	upUnacked int64 // stream window to return to the upstream (batched)
	done      bool
}

// open starts the request of a caller's HEADERS.
func (f *fconn) open(fr *http2.MetaHeadersFrame, r *http.Request, te bool, route *config.Route) {
	l := f.l
	f.lastID = fr.StreamID
	if f.idleAt != nil {
		f.idleAt.Stop()
	}
	wc := pickWeighted(route)
	c := l.proxy.opts.Upstreams.Get(wc.Name)
	s := f.newStream()
	s.id, s.grpc, s.declared, s.bodyEnd, s.dnWin = fr.StreamID, isGRPC(r), r.ContentLength, fr.StreamEnded(), f.peerInit
	f.streams[s.id] = s
	ex := &s.ex
	*ex = exchange{r: r, route: route, wc: wc, c: c, start: time.Now()}
	l.inflight.Add(1)
	l.requests.Add(1)
	if l.proxy.opts.Telemetry != nil {
		// No reused header buffer (ex.hb): the values it would hold end up in the upstream
		// connection's HPACK table, which outlives the stream.
		l.beginRecord(&ex.rec, r, ex.start, nil)
		ex.rec.Cluster = wc.Name
	} else if l.meshInbound() {
		delete(r.Header, telemetry.PeerHeader)
	}
	if body := l.authorizeAs(r, f.peer); body != "" { // MeshPolicy (authz.go), on the mutual TLS peer
		s.localReply(http.StatusForbidden, body, nil, false)
		return
	}
	if c == nil { // removed by a config update since frameable looked
		ex.rec.Flags = "NC"
		s.localReply(http.StatusServiceUnavailable, "cluster "+wc.Name+" is not known to this sidecar yet; retry shortly\n", nil, false)
		return
	}
	if _, ok := c.Admit(); !ok {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		ex.rec.Flags = "UO"
		s.localReply(http.StatusServiceUnavailable, "upstream cluster "+wc.Name+" is overloaded (circuit breaker open); retry later\n",
			http.Header{overloadedHeader: {"true"}}, false)
		return
	}
	ex.retry.init(route, true, c, ex.start)
	if s.grpc {
		if d, ok := grpcTimeout(r.Header); ok {
			ex.retry.capDeadline(ex.start.Add(d))
		}
	}
	s.keep = route.Retry != nil && !s.bodyEnd
	declared := r.Header["Trailer"] // outboundRequest drops it; an HTTP/2 peer may keep only declared trailers
	out := outboundRequest(r, route, wc, nil)
	l.markOutbound(&ex.rec, out.Header, wc.Name)
	ex.hash, ex.hasHash, ex.setCookie = requestHash(r, route, c.Config(), l.proxy.opts.PodIP)
	s.fields = requestFields(&out, te, s.fields[:0])
	for _, v := range declared {
		s.fields = append(s.fields, hpack.HeaderField{Name: "trailer", Value: v})
	}
	s.startAttempt()
}

// requestFields is the header block of out for an HTTP/2 upstream.
func requestFields(out *upstream.Request, te bool, fs []hpack.HeaderField) []hpack.HeaderField {
	fs = append(fs, hpack.HeaderField{Name: ":method", Value: out.Method}, hpack.HeaderField{Name: ":scheme", Value: "http"},
		hpack.HeaderField{Name: ":authority", Value: out.Host}, hpack.HeaderField{Name: ":path", Value: out.URI})
	if te {
		fs = append(fs, hpack.HeaderField{Name: "te", Value: "trailers"})
	}
	return appendFields(fs, out.Header)
}

// appendFields adds h's fields, named in lower case, less the hop-by-hop ones.
func appendFields(fs []hpack.HeaderField, h http.Header) []hpack.HeaderField {
	for k, vv := range h {
		switch k {
		case "Host", "Connection", "Proxy-Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Te", "Trailer":
			continue
		}
		name := lowerName(k)
		for _, v := range vv {
			fs = append(fs, hpack.HeaderField{Name: name, Value: v, Sensitive: k == "Authorization" || k == "Cookie"})
		}
	}
	return fs
}

// callerData takes request body bytes.
func (s *fstream) callerData(p []byte, end bool) {
	f := s.f
	if s.done {
		f.giveBack(s, int64(len(p)))
		return
	}
	s.recvd += int64(len(p))
	if s.declared >= 0 && (s.recvd > s.declared || (end && s.recvd != s.declared)) {
		s.reset(http2.ErrCodeProtocol, "the request body does not match its content-length")
		return
	}
	if len(s.body)-s.sent+len(p) > frameStreamWindow {
		s.reset(http2.ErrCodeFlowControl, "the caller sent more than the stream window")
		return
	}
	if s.keep && len(s.body)+len(p) > maxReplayBody || f.kept+int64(len(p)) > frameMaxKept {
		s.dropKept()
	}
	s.body = append(s.body, p...)
	if s.keep {
		f.kept += int64(len(p))
	}
	if end {
		s.bodyEnd = true
	}
	s.pumpReq()
}

// callerTrailers takes the request's trailers (HEADERS ending the stream).
func (s *fstream) callerTrailers(fr *http2.MetaHeadersFrame) {
	if s.bodyEnd || !fr.StreamEnded() || fr.Truncated {
		s.reset(http2.ErrCodeProtocol, "HEADERS after the request's end, or trailers that do not end it")
		return
	}
	for _, hf := range fr.Fields {
		if hf.IsPseudo() {
			s.reset(http2.ErrCodeProtocol, "a pseudo-header in trailers")
			return
		}
	}
	s.trailers = append([]hpack.HeaderField(nil), fr.Fields...)
	s.bodyEnd = true
	if s.declared >= 0 && s.recvd != s.declared {
		s.reset(http2.ErrCodeProtocol, "the request body does not match its content-length")
		return
	}
	s.pumpReq()
}

// dropKept stops keeping the body for a retry: what was sent is let go.
func (s *fstream) dropKept() {
	if !s.keep {
		return
	}
	s.keep = false
	s.f.kept -= int64(len(s.body))
	if s.sent > 0 {
		s.dropped = true
		n := copy(s.body, s.body[s.sent:])
		s.body = s.body[:n]
		s.acked -= s.sent
		s.sent = 0
	}
}

// pumpReq sends what the upstream stream's windows allow of the body, then its end. While
// the upstream's socket takes nothing (frameOut.blocked), at most frameUpQueued is queued
// for it: the rest stays with the stream, its window not given back to the caller, until
// the socket has taken everything (fup.resume).
func (s *fstream) pumpReq() {
	u := s.u
	if u == nil || s.uid == 0 || s.done {
		return
	}
	for s.sent < len(s.body) && s.upWin > 0 && u.sendWin > 0 && !(u.out.blocked && u.out.buf.Len() >= frameUpQueued) {
		n := int(min(int64(len(s.body)-s.sent), s.upWin, u.sendWin, int64(u.out.maxFrame)))
		end := s.sent+n == len(s.body) && s.bodyEnd && s.trailers == nil
		u.out.data(s.uid, s.body[s.sent:s.sent+n], end)
		s.reqDone = s.reqDone || end
		s.sent += n
		s.upWin -= int64(n)
		u.sendWin -= int64(n)
	}
	u.markDirty()
	if s.sent > s.acked { // bytes that reached the upstream for the first time: their window goes back
		s.f.giveBack(s, int64(s.sent-s.acked))
		s.acked = s.sent
	}
	if !s.keep && s.sent > 0 {
		n := copy(s.body, s.body[s.sent:])
		s.body = s.body[:n]
		s.acked -= s.sent
		s.sent = 0
	}
	if s.sent == len(s.body) && s.bodyEnd && !s.reqDone {
		if s.trailers != nil {
			u.out.headers(s.uid, s.trailers, true)
		} else {
			u.out.data(s.uid, nil, true) // an empty DATA takes no window
		}
		s.reqDone = true
	}
}

// startAttempt picks a host and sends the request to it.
func (s *fstream) startAttempt() {
	ex := &s.ex
	now := time.Now()
	host := ex.c.Pick(ex.hash, ex.hasHash, ex.retry.tried)
	if host == nil {
		s.policyReply(ex.retry.giveUp(errNoHost, now))
		return
	}
	ex.host, ex.rec.UpstreamHost = host, host.Address
	host.Start()
	s.due, s.backoff = ex.retry.begin(host, now), false
	if !s.due.IsZero() {
		s.f.arm(s.due)
	}
	s.sendTo(host)
}

// arm makes the connection's timer fire by at. One timer serves every stream: a deadline
// later than the one armed changes nothing, so a call's timeout costs no timer update
// (each would wake the runtime's network poller).
func (f *fconn) arm(at time.Time) {
	if !f.timerAt.IsZero() && !at.Before(f.timerAt) {
		return
	}
	f.timerAt = at
	d := time.Until(at)
	if f.timer == nil {
		f.timer = time.AfterFunc(d, f.tick)
		return
	}
	f.timer.Reset(d)
}

// tick ends the attempts past their deadline, starts the retries whose back-off is over,
// and arms the timer for the next.
func (f *fconn) tick() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	now := time.Now()
	f.timerAt = time.Time{}
	var next time.Time
	for _, s := range f.streams {
		if s.due.IsZero() || s.done {
			continue
		}
		if now.Before(s.due) {
			if next.IsZero() || s.due.Before(next) {
				next = s.due
			}
			continue
		}
		s.due = time.Time{}
		if s.backoff {
			s.startAttempt()
		} else {
			s.attemptFailed(errTryTimeout)
		}
		if !s.done && !s.due.IsZero() && (next.IsZero() || s.due.Before(next)) {
			next = s.due
		}
	}
	if !next.IsZero() {
		f.arm(next)
	}
	if len(f.ups) > 0 {
		if !now.Before(f.sweepAt) {
			f.sweepAt = now.Add(hostSweep)
			f.sweepUps(now)
		}
		f.arm(f.sweepAt)
	}
	f.mu.Unlock()
	f.flushAll()
}

// upHeaders takes the upstream's response HEADERS (or trailers).
func (s *fstream) upHeaders(fr *http2.MetaHeadersFrame) {
	if s.gotHead {
		s.upTrailers(fr)
		return
	}
	status, err := strconv.Atoi(fr.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 || fr.Truncated { // a header list past the limit is not passed on cut
		s.attemptFailed(errUpstreamReset)
		return
	}
	if status < 200 {
		if status != http.StatusSwitchingProtocols && !fr.StreamEnded() {
			s.f.out.headers(s.id, fr.Fields, false) // 100 Continue, 103 Early Hints: passed on
		}
		return
	}
	ex := &s.ex
	now := time.Now()
	st := ex.retry.onResponse(status, false, now)
	if st.kind == stepForward && s.grpc {
		if v := fieldValue(fr.Fields, "grpc-status"); v != "" {
			if code, err := strconv.Atoi(v); err == nil {
				st = ex.retry.onGRPCStatus(code, st, now)
			}
		}
	}
	if st.kind == stepRetry && (s.dropped || !s.bodyEnd && !s.keep) {
		st = ex.retry.cannotReplay(st, nil, now)
	}
	ex.c.Report(ex.host, st.outcome)
	ex.host = nil
	if st.kind == stepRetry {
		s.detach(http2.ErrCodeCancel, !fr.StreamEnded())
		s.next(st)
		return
	}
	// Forward: the response's header, edited for the route, goes to the caller.
	s.gotHead = true
	ex.status = status
	dst := make(http.Header, len(fr.Fields)+2)
	for _, hf := range fr.RegularFields() {
		k := canonicalName(hf.Name)
		dst[k] = append(dst[k], hf.Value)
	}
	l := s.f.l
	if l.proxy.opts.Telemetry != nil {
		l.responsePeer(&ex.rec, dst)
	}
	responseHeader(dst, dst, ex.route, ex.wc, ex.setCookie) // edited in place
	if l.answerPeer(&ex.rec) {
		dst[telemetry.PeerHeader] = l.proxy.opts.Telemetry.PeerValue()
	}
	fs := append(make([]hpack.HeaderField, 0, len(dst)+1), hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	fs = appendFields(fs, dst)
	for _, hf := range fr.Fields {
		if hf.Name == "trailer" { // the trailers' declaration goes with them
			fs = append(fs, hf)
		}
	}
	// A body must match its content-length (RFC 9113 §8.1.1); HEAD, 204 and 304 have none.
	s.respLen = -1
	if v := dst["Content-Length"]; len(v) == 1 && ex.r.Method != http.MethodHead && status != http.StatusNoContent && status != http.StatusNotModified {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			s.respLen = n
		}
	}
	if fr.StreamEnded() && s.respLen > 0 {
		s.gotHead = true
		s.upFailed(http2.ErrCodeProtocol)
		return
	}
	s.f.out.headers(s.id, fs, fr.StreamEnded())
	if fr.StreamEnded() {
		if s.grpc || strings.HasPrefix(dst.Get("Content-Type"), "application/grpc") {
			s.grpcStatus(dst.Get("Grpc-Status"))
		}
		s.responseEnded()
	}
}

func (s *fstream) upTrailers(fr *http2.MetaHeadersFrame) {
	if !fr.StreamEnded() || fr.Truncated {
		s.upFailed(http2.ErrCodeProtocol)
		return
	}
	if s.respLen >= 0 && s.ex.rec.RespBytes != s.respLen {
		s.upFailed(http2.ErrCodeProtocol)
		return
	}
	fs := fr.RegularFields()
	for _, hf := range fs {
		if hf.Name == "grpc-status" {
			s.grpcStatus(hf.Value)
		}
	}
	if len(s.pend) > 0 {
		s.pendTr = append([]hpack.HeaderField(nil), fs...)
		s.pendEnd = true
		return
	}
	s.f.out.headers(s.id, fs, true)
	s.responseEnded()
}

func (s *fstream) grpcStatus(v string) {
	code, err := strconv.Atoi(v)
	if v == "" || err != nil {
		code = -1
	}
	if s.ex.c != nil {
		s.ex.c.Stats.ObserveGRPC(code)
	}
	s.ex.rec.GRPCStatus = code
}

// upData takes response body bytes from the upstream.
func (s *fstream) upData(p []byte, end bool) {
	if !s.gotHead {
		s.upFailed(http2.ErrCodeProtocol)
		return
	}
	s.ex.rec.RespBytes += int64(len(p))
	if s.respLen >= 0 && (s.ex.rec.RespBytes > s.respLen || end && s.ex.rec.RespBytes != s.respLen) {
		s.upFailed(http2.ErrCodeProtocol) // not passed off as whole
		return
	}
	if len(s.pend)+len(p) > frameStreamWindow {
		s.upFailed(http2.ErrCodeFlowControl)
		return
	}
	s.upHeld += int64(len(p))
	s.pend = append(s.pend, p...)
	s.pendEnd = s.pendEnd || end
	s.pumpResp()
}

// pumpResp sends what the caller's windows allow of the response, then its end.
func (s *fstream) pumpResp() {
	f := s.f
	if s.done || !s.gotHead {
		return
	}
	sent := 0
	for sent < len(s.pend) && s.dnWin > 0 && f.sendWin > 0 {
		n := int(min(int64(len(s.pend)-sent), s.dnWin, f.sendWin, int64(f.out.maxFrame)))
		f.out.data(s.id, s.pend[sent:sent+n], s.pendEnd && s.pendTr == nil && sent+n == len(s.pend))
		sent += n
		s.dnWin -= int64(n)
		f.sendWin -= int64(n)
	}
	if sent > 0 {
		s.pend = s.pend[:copy(s.pend, s.pend[sent:])]
		if s.u != nil {
			s.u.giveBack(s, int64(sent))
		}
	}
	if len(s.pend) == 0 && s.pendEnd {
		switch {
		case s.pendTr != nil:
			f.out.headers(s.id, s.pendTr, true)
		case sent == 0:
			f.out.data(s.id, nil, true)
		}
		s.responseEnded()
	}
}

// responseEnded ends the exchange once the response has gone to the caller whole.
func (s *fstream) responseEnded() {
	// The upstream's stream is closed both ways, or it answered before the request ended
	// and the rest of the request is cancelled; the caller is told to stop sending it
	// (RST_STREAM NO_ERROR after a whole response, RFC 9113 §8.1).
	s.detach(http2.ErrCodeCancel, !s.reqDone)
	if !s.bodyEnd {
		_ = s.f.out.fr.WriteRSTStream(s.id, http2.ErrCodeNo)
		s.f.out.dirty = true
	}
	s.finish()
}

// upReset takes the upstream's RST_STREAM.
func (s *fstream) upReset(code http2.ErrCode) {
	if !s.gotHead {
		if code == http2.ErrCodeRefusedStream && !s.ex.stale {
			// Not processed (RFC 9113 §8.7): sent again at once, uncounted, as for a
			// pooled connection the server had closed.
			s.ex.stale = true
			s.detach(0, false)
			s.sendTo(s.ex.host)
			return
		}
		s.attemptFailed(errUpstreamReset)
		return
	}
	s.upFailed(code)
}

// upFailed ends a stream whose response had begun: the caller's stream is reset, so it
// never takes a cut response for a whole one.
func (s *fstream) upFailed(code http2.ErrCode) {
	if code == http2.ErrCodeNo || code == http2.ErrCodeCancel {
		code = http2.ErrCodeInternal
	}
	if s.ex.host != nil {
		s.ex.c.Report(s.ex.host, upstream.GatewayError)
		s.ex.host = nil
	}
	s.detach(http2.ErrCodeCancel, true)
	s.reset(code, "")
}

// attemptFailed ends an attempt that got no response (reset, refused, timed out,
// connection lost) and retries or answers, as the event loop does.
func (s *fstream) attemptFailed(err error) {
	if s.gotHead {
		s.upFailed(http2.ErrCodeInternal)
		return
	}
	ex := &s.ex
	s.detach(http2.ErrCodeCancel, true)
	now := time.Now()
	st := ex.retry.onError(err, now)
	if st.kind == stepRetry && (s.dropped || !s.bodyEnd && !s.keep) && !isConnectFailure(err) {
		st = ex.retry.cannotReplay(st, err, now)
	}
	if ex.host != nil {
		ex.c.Report(ex.host, st.outcome)
		ex.host = nil
	}
	s.next(st)
}

// next carries out the policy's step after an attempt whose answer is not forwarded.
func (s *fstream) next(st step) {
	switch {
	case st.kind == stepReply:
		s.policyReply(st)
	case st.delay <= 0:
		s.startAttempt()
	default:
		s.due, s.backoff = time.Now().Add(st.delay), true
		s.f.arm(s.due)
	}
}

// detach leaves the current attempt's upstream stream, resetting it with code when rst.
func (s *fstream) detach(code http2.ErrCode, rst bool) {
	u := s.u
	if u == nil {
		return
	}
	if s.uid != 0 {
		if rst && !u.dead {
			_ = u.out.fr.WriteRSTStream(s.uid, code)
			u.markDirty()
		}
		u.forget(s)
	} else {
		u.unwait(s)
	}
	if s.upHeld > 0 {
		u.giveBack(nil, s.upHeld) // the connection's window for what will not be relayed
		s.upHeld = 0
	}
	s.u, s.uid = nil, 0
	s.sent = 0
	if !s.keep {
		s.acked = 0
	}
	s.pend = s.pend[:0]
	s.pendEnd, s.pendTr = false, nil
}
