package httpproxy

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// maxReplayBody bounds the request body the proxy buffers so it can retry or mirror it;
// larger bodies stream through once and are neither retried nor mirrored (Envoy behaves
// the same way past its buffer limit).
const maxReplayBody = 1 << 20

var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (l *Listener) forward(w http.ResponseWriter, r *http.Request, route *config.Route) {
	p := l.proxy
	start := time.Now()
	wc := pickWeighted(route)
	rec := l.recordOf(w) // nil: telemetry off (telemetry.go)
	if rec != nil {
		rec.Cluster = wc.Name
	}
	c, cc := l.destination(w, r, route, wc, start)
	if c == nil {
		return // answered here: unknown, unresolved, or queued for async delivery
	}
	waited, release, ok := l.holdFunction(w, r, c, cc)
	if rec != nil && waited > 0 { // the hold is a child span of this hop's (telemetry)
		now := time.Now()
		rec.HoldStart, rec.HoldEnd = now.Add(-waited), now
	}
	if !ok {
		return
	}
	if release != nil {
		defer release()
	}
	if _, ok := c.Admit(); !ok {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		if rec != nil {
			rec.Flags = "UO"
		}
		overloadedReply(w, wc.Name)
		return
	}
	defer c.Done()

	body, replayable, ok := replayBody(w, r, route, cc)
	if !ok {
		return
	}
	ctx := r.Context()
	// What outboundRequest drops as hop-by-hop but the protocol needs: the Upgrade asked
	// for, and (below) whether the caller takes trailers (TE: trailers, which gRPC sends).
	upgrade := upgradeProtocol(r)
	if cc.Function != nil && replayable && upgrade == "" { // a tunnel reads the connection itself
		// A function's call can run long. A caller that hangs up meanwhile cancels it, as
		// it would through Knative's queue-proxy, instead of leaving it to run for nobody
		// and hold a containerConcurrency slot. The watch peeks at the connection, so it
		// needs the request body read in full (a chunked or larger one streams, unwatched).
		// It is deferred before res.release below, so it ends after the response body.
		if cw, ok := w.(closeWatcher); ok {
			var stop func()
			ctx, stop = cw.WatchClose(ctx)
			defer stop()
		}
	}
	startBy := l.startBy(r.Header, start)
	grpcCall := isGRPC(r)
	teTrailers := httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers")
	out := outboundRequest(r, route, wc, body)
	if rec != nil {
		l.markOutbound(rec, out.Header, wc.Name)
	}
	out.HTTP2 = upgrade == "" && cc.Protocol.ForCaller(r.ProtoMajor == 2) == config.UpstreamHTTP2
	if out.HTTP2 && teTrailers {
		out.Header["Te"] = []string{"trailers"}
	}
	if upgrade != "" {
		upgradeUpstream(&out, upgrade)
	}
	if fn := cc.Function; fn != nil {
		setStartBudget(out.Header, fn, start)
	}
	for _, m := range route.Mirrors {
		if replayable && chance(m.PerMillion) {
			p.mirror(&out, m.Cluster, route.Timeout)
		}
	}
	tee := streamBody(r, route, &out)
	hash, hasHash, setCookie := requestHash(r, route, cc, l.proxy.opts.PodIP)

	var rs retryState
	rs.init(route, replayable || tee != nil, c, start)
	if grpcCall {
		if d, ok := grpcTimeout(r.Header); ok {
			rs.capDeadline(start.Add(d)) // never past the caller's own deadline
		}
	}
	defer rs.release()
	var res attemptResult
	defer res.release()
	s := l.exchange(ctx, c, &out, &rs, &res, hash, hasHash, startBy, tee, grpcCall)
	if s.kind == stepReply {
		if l.appStartTimedOut(w, c, s.err, start) {
			return
		}
		c.Stats.Observe(s.status, time.Since(start))
		if rec != nil {
			rec.Flags = responseFlag(s.err)
		}
		markOverloaded(w, s.err)
		localReply(w, s.status, s.msg)
		return
	}
	if res.resp.StatusCode == http.StatusSwitchingProtocols {
		hw, isH1 := w.(*h1Writer)
		rwc, isConn := res.resp.Body.(io.ReadWriteCloser)
		if upgrade == "" || !isH1 || !isConn {
			c.Stats.Observe(http.StatusBadGateway, time.Since(start))
			localReply(w, http.StatusBadGateway, "upstream answered 101 Switching Protocols to a request that asked for no upgrade\n")
			return
		}
		c.Stats.Observe(http.StatusSwitchingProtocols, time.Since(start))
		l.tunnel(hw, res.resp, rwc)
		return
	}
	l.relay(w, c, cc, route, wc, &res, setCookie, waited, start)
}

// streamBody readies a body that streams through (not buffered by replayBody) for its
// trailers, which the caller's server fills only at the body's end, and, on a route
// with retries, keeps a copy while it is under maxReplayBody (replayTee) so the request
// can still be retried once it has been sent whole. It returns that copy's tee, or nil.
func streamBody(r *http.Request, route *config.Route, out *upstream.Request) *replayTee {
	if out.Body == nil {
		return nil
	}
	// Trailers may follow a declared Trailer header or, on HTTP/1.1, any chunked body. An
	// HTTP/2 caller's undeclared trailers never reach r.Trailer, so a gRPC call (which
	// declares none) keeps its END_STREAM on its last DATA frame upstream.
	if r.Trailer != nil || (r.ProtoMajor == 1 && out.ContentLength < 0) {
		// The names the caller declared (its Trailer header) are declared upstream too:
		// an HTTP/2 peer may drop trailers it was not told of (Go's server does).
		out.Trailer = make(http.Header, len(r.Trailer))
		for k := range r.Trailer {
			out.Trailer[k] = nil
		}
		out.Body = &trailerCopy{r: out.Body, req: r, dst: out.Trailer}
	}
	if route.Retry == nil || out.ContentLength >= 0 {
		return nil
	}
	tee := &replayTee{r: out.Body}
	out.Body = tee
	return tee
}

// destination finds the cluster a request goes to. It answers the request itself, and
// returns a nil cluster, when the cluster is unknown or unresolved, or when the request
// goes to a function's async queue.
func (l *Listener) destination(w http.ResponseWriter, r *http.Request, route *config.Route, wc *config.WeightedCluster, start time.Time) (*upstream.Cluster, *config.Cluster) {
	p := l.proxy
	name := wc.Name
	c := p.opts.Upstreams.Get(name)
	if c == nil {
		if rec := l.recordOf(w); rec != nil {
			rec.Flags = "NC"
		}
		localReply(w, http.StatusServiceUnavailable, "cluster "+name+" is not known to this sidecar yet; retry shortly\n")
		return nil, nil
	}
	cc := c.Config()
	if cc.Unresolved != "" {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		localReply(w, http.StatusServiceUnavailable, cc.Unresolved+"\n")
		return nil, nil
	}
	if fn := cc.Function; fn != nil && p.opts.Async != nil && (fn.Async || prefersAsync(r.Header)) {
		// The queued call is what the synchronous one would have sent: the route's header
		// edits (which drop what a caller may not set), rewrites and hop-by-hop removal
		// apply before it is published.
		out := outboundRequest(r, route, wc, nil)
		r.Host = out.Host
		if u, err := url.ParseRequestURI(out.URI); err == nil {
			r.URL.Path, r.URL.RawPath, r.URL.RawQuery = u.Path, u.RawPath, u.RawQuery
		}
		p.opts.Async.ServeAsync(w, r, fn.Namespace, fn.Name)
		c.Stats.Observe(http.StatusAccepted, time.Since(start))
		return nil, nil
	}
	return c, cc
}

// holdFunction holds a request to a function with no ready endpoint until one is ready
// (cold start). It returns how long the request waited and the queue slot to release
// when the exchange ends (nil: none); ok is false when the request was answered here.
func (l *Listener) holdFunction(w http.ResponseWriter, r *http.Request, c *upstream.Cluster, cc *config.Cluster) (waited time.Duration, release func(), ok bool) {
	p := l.proxy
	fn := cc.Function
	if fn == nil || c.ReadyCount() != 0 {
		return 0, nil, true
	}
	if p.opts.Holder == nil {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		localReply(w, http.StatusServiceUnavailable, "no ready endpoint for function "+fn.Namespace+"/"+fn.Name+"; it may be scaled to zero, retry later\n")
		return 0, nil, false
	}
	// A held caller that hangs up must give its queue slot back: watch the downstream
	// connection for the length of the hold (HTTP/2 streams carry this in r.Context()).
	hctx, stop := r.Context(), func() {}
	if cw, ok := w.(closeWatcher); ok {
		hctx, stop = cw.WatchClose(hctx)
	}
	release, wt, err := p.opts.Holder.Hold(hctx, FunctionRef{Namespace: fn.Namespace, Name: fn.ScaleName(), Cluster: cc.Name,
		HoldTimeout: fn.HoldTimeout, MaxPending: fn.MaxPending, ContainerConcurrency: fn.ContainerConcurrency})
	stop()
	if !l.holdDone(w, c, release, err) {
		return 0, nil, false
	}
	return wt, release, true
}

// replayBody reads a body up to maxReplayBody in full when it may be sent more than once
// (retries, mirrors), and for a function, whose connection is then watched for a caller
// that leaves; Knative's activator buffers request bodies the same way. replayable
// reports whether the request can be sent again (no body, or one read here); ok is false
// when reading the body failed and the request was answered with 400.
func replayBody(w http.ResponseWriter, r *http.Request, route *config.Route, cc *config.Cluster) (body []byte, replayable, ok bool) {
	replayable = r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody
	if !replayable && (route.Retry != nil || len(route.Mirrors) > 0 || cc.Function != nil) && r.ContentLength > 0 && r.ContentLength <= maxReplayBody {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			localReply(w, http.StatusBadRequest, "reading request body: "+err.Error()+"\n")
			return nil, false, false
		}
		return b, true, true
	}
	return nil, replayable, true
}

// exchange runs the attempts the exchange policy (retrystate.go) allows and returns its
// last step; a response to relay is left in res. This path reads the wall clock, as the
// connection deadlines it sets do, and sleeps on the injected one.
func (l *Listener) exchange(ctx context.Context, c *upstream.Cluster, out *upstream.Request, rs *retryState, res *attemptResult,
	hash uint64, hasHash bool, startBy time.Time, tee *replayTee, grpcCall bool) step {
	for {
		h := c.Pick(hash, hasHash, rs.tried)
		if h == nil {
			return rs.giveUp(errNoHost, time.Now())
		}
		res.release()
		*res = l.attempt(ctx, c, out, h, rs.begin(h, time.Now()), startBy)
		if upstream.IsPoolError(res.err) {
			// No connection could be had: the host never saw the attempt, and the answer
			// is the pool's (loopconnlimit.go does the same on the event loop).
			c.Report(h, upstream.NotSent)
			return rs.giveUp(res.err, time.Now())
		}
		if ctx.Err() != nil {
			rs.callerLeft()
		}
		var s step
		if now := time.Now(); res.err != nil {
			s = rs.onError(res.err, now)
		} else {
			s = rs.onResponse(res.resp.StatusCode, isAppStartTimeout(res.resp), now)
			if s.kind == stepForward && grpcCall {
				if code := headerGRPCStatus(res.resp); code >= 0 {
					s = rs.onGRPCStatus(code, s, now)
				}
			}
		}
		if s.kind == stepRetry && tee != nil {
			// A streamed body is sent again only if it ended within the copy's limit, or
			// when the connect failed and so nothing read it: then it goes as it is.
			if b, ok := tee.body(); ok {
				out.BodyBytes, out.Body, tee = b, nil, nil
			} else if !isConnectFailure(res.err) || !tee.untouched() {
				s = rs.cannotReplay(s, res.err, time.Now())
			}
		}
		c.Report(h, s.outcome)
		if s.kind != stepRetry {
			return s
		}
		if !l.proxy.sleep(ctx, s.delay) {
			return rs.giveUp(errRouteTimeout, time.Now()) // the caller left during the back-off
		}
	}
}

// relay writes the upstream's response downstream: its header edited for the route,
// the cold-start wait when there was one, and its body.
func (l *Listener) relay(w http.ResponseWriter, c *upstream.Cluster, cc *config.Cluster, route *config.Route, wc *config.WeightedCluster,
	res *attemptResult, setCookie string, waited time.Duration, start time.Time) {
	if fn := cc.Function; fn != nil && isAppStartTimeout(res.resp) {
		if rec, ok := l.proxy.opts.Holder.(HoldTimeoutRecorder); ok {
			rec.HoldTimedOut(FunctionRef{Namespace: fn.Namespace, Name: fn.ScaleName(), Cluster: cc.Name, HoldTimeout: fn.HoldTimeout})
		}
	}
	rec := l.recordOf(w)
	if rec != nil {
		l.responsePeer(rec, res.resp.Header)
	}
	responseHeader(w.Header(), res.resp.Header, route, wc, setCookie)
	if rec != nil && l.answerPeer(rec) {
		w.Header()[telemetry.PeerHeader] = l.proxy.opts.Telemetry.PeerValue()
	}
	if waited > 0 {
		w.Header().Set("X-Weft-Cold-Start", strconv.FormatFloat(waited.Seconds(), 'f', 3, 64))
	}
	w.WriteHeader(res.resp.StatusCode)
	copyBody(w, res.resp)
	setTrailers(w, res.resp.Trailer)
	c.Stats.Observe(res.resp.StatusCode, time.Since(start))
	if rec != nil && res.host != nil {
		rec.UpstreamHost = res.host.Address
	}
	if strings.HasPrefix(res.resp.Header.Get("Content-Type"), "application/grpc") {
		code, _ := grpcStatus(res.resp)
		c.Stats.ObserveGRPC(code)
		if rec != nil {
			rec.GRPCStatus = code
		}
	}
}

// responseHeader fills dst, the downstream response's header, from the upstream's: hop-by-hop
// headers dropped, the session cookie a ring-hash policy minted, then the picked
// destination's and the route's edits. It takes src's values over; src is not used again.
func responseHeader(dst, src http.Header, route *config.Route, wc *config.WeightedCluster, setCookie string) {
	removeConnectionHeaders(src)
	for k, vv := range src {
		dst[k] = vv
	}
	for _, k := range hopHeaders {
		delete(dst, k)
	}
	if setCookie != "" {
		dst.Add("Set-Cookie", setCookie)
	}
	applyHeaderEdits(dst, wc.ResponseHeadersToRemove, wc.ResponseHeadersToAdd)
	applyResponseHeaders(dst, route)
}

// overloadedReply answers a request the cluster's circuit breaker refused, as Envoy does:
// 503 with x-weft-overloaded (Envoy's x-envoy-overloaded).
func overloadedReply(w http.ResponseWriter, cluster string) {
	w.Header().Set(overloadedHeader, "true")
	localReply(w, http.StatusServiceUnavailable, "upstream cluster "+cluster+" is overloaded (circuit breaker open); retry later\n")
}

const overloadedHeader = "X-Weft-Overloaded"

// attemptResult is one upstream try: a response with headers, or an error.
type attemptResult struct {
	host   *upstream.Host
	resp   *http.Response
	err    error
	cancel context.CancelFunc
}

func (a *attemptResult) release() {
	if a.resp != nil {
		_ = a.resp.Body.Close()
		a.resp = nil
	}
	if a.cancel != nil {
		a.cancel()
		a.cancel = nil
	}
}

// attempt sends out to h, by tryBy (zero: no deadline). The caller reports its outcome.
// The route and per-try timeouts are enforced as the connection's deadline rather than a
// context: no timer or context allocation per request on the hot path.
func (l *Listener) attempt(ctx context.Context, c *upstream.Cluster, out *upstream.Request, h *upstream.Host,
	tryBy, startBy time.Time) attemptResult {
	h.Start()
	resp, err := c.RoundTrip(ctx, out, h, tryBy)
	if err != nil && l.inbound && !l.appSeen.Load() {
		resp, err = l.waitForApp(ctx, c, out, h, tryBy, startBy, err)
	}
	if err == nil && l.inbound && !l.appSeen.Load() {
		l.appSeen.Store(true)
	}
	return attemptResult{host: h, resp: resp, err: err}
}

// sleep waits d on the proxy's clock; false if the caller left first.
func (p *Proxy) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := p.opts.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-ctx.Done():
		return false
	}
}

// pickWeighted picks one of the route's clusters by weight.
func pickWeighted(route *config.Route) *config.WeightedCluster {
	if len(route.Clusters) == 1 {
		return &route.Clusters[0]
	}
	n := rand.Uint32N(route.TotalWeight)
	for i := range route.Clusters {
		if n < route.Clusters[i].Weight {
			return &route.Clusters[i]
		}
		n -= route.Clusters[i].Weight
	}
	return &route.Clusters[len(route.Clusters)-1]
}

// outboundRequest builds the request every attempt sends: rewritten path and host,
// hop-by-hop headers dropped, the route's header edits applied. It edits r.Header in
// place: the downstream request is not used again.
func outboundRequest(r *http.Request, route *config.Route, wc *config.WeightedCluster, body []byte) upstream.Request {
	hdr := r.Header
	removeConnectionHeaders(hdr)
	for _, k := range hopHeaders {
		delete(hdr, k)
	}
	// Only a caller's sidecar sets it, for the function's sidecar: never from an app, never
	// passed to one (see startBudgetHeader).
	delete(hdr, startBudgetHeader)
	// The picked destination's edits first, then the route's (Envoy's order: the enclosing
	// route's headers win).
	applyHeaderEdits(hdr, wc.RequestHeadersToRemove, wc.RequestHeadersToAdd)
	applyHeaderEdits(hdr, route.RequestHeadersToRemove, route.RequestHeadersToAdd)
	uri := route.Match.RewritePath(r.URL.EscapedPath(), route.PrefixRewrite)
	if r.URL.RawQuery != "" {
		uri += "?" + r.URL.RawQuery
	}
	out := upstream.Request{Method: r.Method, URI: uri, Host: r.Host, Header: hdr}
	if route.HostRewrite != "" {
		out.Host = route.HostRewrite
	}
	switch {
	case body != nil:
		out.BodyBytes = body
	case r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody:
		out.Body, out.ContentLength = r.Body, r.ContentLength
	}
	return out
}

// copyBody streams the upstream body, flushing each chunk when the length is unknown so
// streamed responses (SSE, chunked) reach the caller as they come.
func copyBody(w http.ResponseWriter, resp *http.Response) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	flusher, _ := w.(http.Flusher)
	stream := resp.ContentLength < 0 && flusher != nil
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if stream {
				flusher.Flush()
			}
		}
		if err != nil {
			if a, ok := w.(bodyAborter); ok && err != io.EOF {
				a.abortBody() // the upstream body broke: the caller must not see it end cleanly
			}
			return
		}
	}
}

// closeWatcher is implemented by the HTTP/1 response writer; see h1Writer.WatchClose.
type closeWatcher interface {
	WatchClose(context.Context) (context.Context, func())
}

// holdDone answers a refused hold with 503 (and Retry-After when the holder says when);
// it reports whether the request may go on.
func (l *Listener) holdDone(w http.ResponseWriter, c *upstream.Cluster, release func(), err error) bool {
	if err == nil {
		return true
	}
	if release != nil {
		release()
	}
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) {
		w.Header().Set("Retry-After", strconv.Itoa(int((ra.RetryAfter()+time.Second-1)/time.Second)))
	}
	c.Stats.Observe(http.StatusServiceUnavailable, 0)
	localReply(w, http.StatusServiceUnavailable, err.Error()+"\n")
	return false
}

// removeConnectionHeaders drops the headers a Connection header names: they are
// hop-by-hop too (RFC 9110 §7.6.1).
func removeConnectionHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				delete(h, textproto.CanonicalMIMEHeaderKey(name))
			}
		}
	}
}
