package httpproxy

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httphead"
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
	name := wc.Name
	c := p.opts.Upstreams.Get(name)
	if c == nil {
		localReply(w, http.StatusServiceUnavailable, "cluster "+name+" is not known to this sidecar yet; retry shortly\n")
		return
	}
	cc := c.Config()
	if cc.Unresolved != "" {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		localReply(w, http.StatusServiceUnavailable, cc.Unresolved+"\n")
		return
	}
	if fn := cc.Function; fn != nil && p.opts.Async != nil && (fn.Async || prefersAsync(r.Header)) {
		p.opts.Async.ServeAsync(w, r, fn.Namespace, fn.Name)
		c.Stats.Observe(http.StatusAccepted, time.Since(start))
		return
	}
	var waited time.Duration
	if fn := cc.Function; fn != nil && c.ReadyCount() == 0 {
		if p.opts.Holder == nil {
			c.Stats.Observe(http.StatusServiceUnavailable, 0)
			localReply(w, http.StatusServiceUnavailable, "no ready endpoint for function "+fn.Namespace+"/"+fn.Name+"; it may be scaled to zero, retry later\n")
			return
		}
		// A held caller that hangs up must give its queue slot back: watch the downstream
		// connection for the length of the hold (HTTP/2 streams carry this in r.Context()).
		hctx, stop := r.Context(), func() {}
		if cw, ok := w.(closeWatcher); ok {
			hctx, stop = cw.WatchClose(hctx)
		}
		release, wt, err := p.opts.Holder.Hold(hctx, FunctionRef{Namespace: fn.Namespace, Name: fn.Name, Cluster: cc.Name,
			HoldTimeout: fn.HoldTimeout, MaxPending: fn.MaxPending, ContainerConcurrency: fn.ContainerConcurrency})
		stop()
		if !l.holdDone(w, c, release, err) {
			return
		}
		if release != nil {
			defer release()
		}
		waited = wt
	}
	if _, ok := c.Admit(); !ok {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		overloadedReply(w, name)
		return
	}
	defer c.Done()

	ctx := r.Context()
	// The route timeout covers every attempt and the whole response, as in Envoy. It is
	// enforced as a connection deadline rather than a context: no timer or context
	// allocation per request on the hot path.
	var deadline time.Time
	if route.Timeout > 0 {
		deadline = start.Add(route.Timeout)
	}
	var body []byte
	replayable := r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody
	// A body up to maxReplayBody is read in full when it may be sent more than once, and
	// for a function, whose connection is then watched for a caller that leaves (below);
	// Knative's activator buffers request bodies the same way.
	if !replayable && (route.Retry != nil || len(route.Mirrors) > 0 || cc.Function != nil) && r.ContentLength > 0 && r.ContentLength <= maxReplayBody {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			localReply(w, http.StatusBadRequest, "reading request body: "+err.Error()+"\n")
			return
		}
		body, replayable = b, true
	}
	if cc.Function != nil && replayable {
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
	out := outboundRequest(r, route, wc, body)
	if fn := cc.Function; fn != nil {
		setStartBudget(out.Header, fn, start)
	}
	for _, m := range route.Mirrors {
		if replayable && chance(m.PerMillion) {
			p.mirror(&out, m.Cluster, route.Timeout)
		}
	}
	hash, hasHash, setCookie := requestHash(r, route, cc)

	attempts := 1
	var rp *config.RetryPolicy
	if route.Retry != nil && replayable {
		rp = route.Retry
		attempts += rp.NumRetries
	}
	var perTry time.Duration
	if rp != nil {
		perTry = rp.PerTryTimeout
	}
	var triedBuf [4]*upstream.Host
	tried := triedBuf[:0]
	var res attemptResult
	for attempt := 0; attempt < attempts; attempt++ {
		if attempt > 0 {
			if !c.AdmitRetry() {
				break
			}
			if !p.sleep(ctx, retryBackoff(rp, attempt), deadline) {
				c.RetryDone()
				res.release()
				res = attemptResult{err: errRouteTimeout}
				break
			}
		}
		res.release()
		res = l.attempt(ctx, c, &out, hash, hasHash, tried, deadline, perTry, startBy)
		if attempt > 0 {
			c.RetryDone()
		}
		if res.host != nil {
			tried = append(tried, res.host)
		}
		if res.host == nil || attempt == attempts-1 || !retriable(rp, &res, ctx, deadline) {
			break
		}
	}
	defer res.release()
	if res.resp == nil {
		if l.appStartTimedOut(w, c, res.err, start) {
			return
		}
		status, msg := res.errorReply(deadline)
		c.Stats.Observe(status, time.Since(start))
		localReply(w, status, msg)
		return
	}
	if fn := cc.Function; fn != nil && isAppStartTimeout(res.resp) {
		if rec, ok := p.opts.Holder.(HoldTimeoutRecorder); ok {
			rec.HoldTimedOut(FunctionRef{Namespace: fn.Namespace, Name: fn.Name, Cluster: cc.Name, HoldTimeout: fn.HoldTimeout})
		}
	}
	responseHeader(w.Header(), res.resp.Header, route, wc, setCookie)
	if waited > 0 {
		w.Header().Set("X-Weft-Cold-Start", strconv.FormatFloat(waited.Seconds(), 'f', 3, 64))
	}
	w.WriteHeader(res.resp.StatusCode)
	copyBody(w, res.resp)
	c.Stats.Observe(res.resp.StatusCode, time.Since(start))
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

func (l *Listener) attempt(ctx context.Context, c *upstream.Cluster, out *upstream.Request,
	hash uint64, hasHash bool, tried []*upstream.Host, deadline time.Time, perTry time.Duration, startBy time.Time) attemptResult {
	h := c.Pick(hash, hasHash, tried)
	if h == nil {
		return attemptResult{err: errNoHost}
	}
	res := attemptResult{host: h}
	tryDeadline := deadline
	if perTry > 0 {
		if pd := time.Now().Add(perTry); deadline.IsZero() || pd.Before(deadline) {
			tryDeadline = pd
		}
	}
	h.Start()
	resp, err := c.RoundTrip(ctx, out, h, tryDeadline)
	if err != nil && l.inbound && !l.appSeen.Load() {
		resp, err = l.waitForApp(ctx, c, out, h, tryDeadline, startBy, err)
	}
	if err == nil && l.inbound && !l.appSeen.Load() {
		l.appSeen.Store(true)
	}
	res.resp, res.err = resp, err
	outcome := upstream.GatewayError
	switch {
	case err == nil:
		outcome = statusOutcome(resp.StatusCode)
	case ctx.Err() != nil || expired(deadline):
		outcome = upstream.Success // the route timed out or the caller left: not the host's fault
	case isConnectFailure(err) || upstream.IsResetBeforeResponse(err):
		outcome = upstream.LocalOriginFailure
	}
	c.Report(h, outcome)
	return res
}

// statusOutcome classifies a response for outlier detection.
func statusOutcome(code int) upstream.Outcome {
	switch {
	case code == 502 || code == 503 || code == 504:
		return upstream.GatewayError
	case code >= 500:
		return upstream.ServerError
	}
	return upstream.Success
}

var (
	errNoHost       = errors.New("no healthy upstream")
	errRouteTimeout = errors.New("route timeout")
)

func expired(deadline time.Time) bool { return !deadline.IsZero() && !time.Now().Before(deadline) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, errRouteTimeout) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// retriable applies the route's retry_on conditions to an attempt's result.
func retriable(rp *config.RetryPolicy, res *attemptResult, ctx context.Context, deadline time.Time) bool {
	if rp == nil || ctx.Err() != nil || expired(deadline) {
		return false
	}
	if res.err != nil {
		return retryOnError(rp, res.err)
	}
	if isAppStartTimeout(res.resp) {
		return false // the caller's hold is spent: another try would be refused at once
	}
	return retryOnStatus(rp, res.resp.StatusCode)
}

// retryOnError reports whether a failed attempt (no response) may be retried.
func retryOnError(rp *config.RetryPolicy, err error) bool {
	if rp.On&(config.Retry5xx|config.RetryGatewayError|config.RetryReset) != 0 {
		return true
	}
	return rp.On&config.RetryConnectFailure != 0 && isConnectFailure(err)
}

// retryOnStatus reports whether a response with this status may be retried.
func retryOnStatus(rp *config.RetryPolicy, code int) bool {
	switch {
	case rp.On&config.Retry5xx != 0 && code >= 500:
		return true
	case rp.On&config.RetryGatewayError != 0 && (code == 502 || code == 503 || code == 504):
		return true
	case rp.On&config.RetryRetriable4xx != 0 && code == 409:
		return true
	case rp.On&config.RetryRetriableStatusCodes != 0:
		for _, rc := range rp.RetriableCodes {
			if rc == code {
				return true
			}
		}
	}
	return false
}

func isConnectFailure(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// errorReply turns a failed final attempt into what Envoy would answer.
func (a *attemptResult) errorReply(deadline time.Time) (int, string) {
	var bad *httphead.Problem
	switch {
	case errors.Is(a.err, errNoHost):
		return http.StatusServiceUnavailable, "no healthy upstream\n"
	case errors.As(a.err, &bad):
		return bad.Status, bad.Reason + "\n" // 502: the response's framing is ambiguous
	case expired(deadline):
		return http.StatusGatewayTimeout, "upstream request timeout\n"
	case isConnectFailure(a.err) && isTimeout(a.err):
		// Envoy's words for a connect_timeout: 503, not the 504 of a request timeout.
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection timeout\n"
	case isTimeout(a.err):
		return http.StatusGatewayTimeout, "upstream request timeout\n"
	case isConnectFailure(a.err):
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n"
	default:
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n"
	}
}

// retryBackoff is Envoy's jittered exponential back-off: uniform in
// [0, min(base·2^(n-1), max)) for the n-th retry; base 25 ms and max 10× base by default.
func retryBackoff(rp *config.RetryPolicy, n int) time.Duration {
	ceil := rp.BaseInterval << min(n-1, 30)
	if ceil > rp.MaxInterval || ceil <= 0 {
		ceil = rp.MaxInterval
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil)))
}

func (p *Proxy) sleep(ctx context.Context, d time.Duration, deadline time.Time) bool {
	if !deadline.IsZero() && time.Until(deadline) < d {
		return false // the back-off would outlast the route timeout
	}
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
	uri := r.URL.EscapedPath()
	if route.PrefixRewrite != "" && route.Match.PathKind == config.PathPrefix {
		uri = rewritePrefix(uri, route.Match.Path, route.PrefixRewrite)
	}
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
