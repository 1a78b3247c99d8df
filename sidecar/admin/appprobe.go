package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/weftmesh/weft/contract"
)

// App probes (docs/probes.md): the injector rewrote the kubelet's probes on captured app
// ports to GET /app-health/<container>/<kind> on the metrics port, and recorded the
// originals (contract.AppProbesEnv). The sidecar runs the original against the app on the
// loopback, as the kubelet would have run it against the pod, and answers 200 or 503. Its
// own dials are not captured: capture exempts the sidecar's UID, and the loopback.
const (
	// MaxAppProbesInFlight bounds the app probes the sidecar runs at once; a request past
	// it is answered 503 at once. The kubelet runs each probe of a container one at a time,
	// so a pod of a few containers stays far below it.
	MaxAppProbesInFlight = 16
	// appProbeBodyLimit is how much of an HTTP probe's answer is read, the kubelet's 10 KiB
	// (a longer body is not a failure: the rest is not read).
	appProbeBodyLimit = 10 << 10
	// appProbeHeaderLimit bounds the response headers of an HTTP probe (Go's default is
	// 10 MiB per response).
	appProbeHeaderLimit = 64 << 10
	// appProbeMaxRedirects is the kubelet's limit on same-host redirects.
	appProbeMaxRedirects = 10
	// appProbeDefaultTimeout is the kubelet's timeoutSeconds default.
	appProbeDefaultTimeout = time.Second
	// appProbeHost is where the app is probed: the pod's loopback, where the sidecar's
	// inbound listener reaches the app too.
	appProbeHost = "127.0.0.1"
)

// appHealthKey is a valid contract.AppProbes key: a container name (a DNS label) and a kind.
var appHealthKey = regexp.MustCompile(`^/app-health/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/(readyz|livez|startupz)$`)

// ParseAppProbes decodes the value of contract.AppProbesEnv; empty is none. Any error means
// the record is not the injector's (it is longer than contract.MaxAppProbesBytes, not JSON,
// a key is no app-health path, or a probe is not exactly one of httpGet, tcpSocket and grpc
// on a port 1-65535): the sidecar refuses to start with it rather than guess, as Istio's
// agent does, so the pod shows the error instead of failing its probes one by one.
func ParseAppProbes(s string) (contract.AppProbes, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > contract.MaxAppProbesBytes {
		return nil, fmt.Errorf("%s is %d bytes, more than %d", contract.AppProbesEnv, len(s), contract.MaxAppProbesBytes)
	}
	var probes contract.AppProbes
	if err := json.Unmarshal([]byte(s), &probes); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object of probes: %w", contract.AppProbesEnv, err)
	}
	for path, p := range probes {
		if !appHealthKey.MatchString(path) {
			return nil, fmt.Errorf("%s: key %.100q is not /app-health/<container>/<readyz|livez|startupz>", contract.AppProbesEnv, path)
		}
		if err := checkAppProbe(p); err != nil {
			return nil, fmt.Errorf("%s: probe %s: %w", contract.AppProbesEnv, path, err)
		}
	}
	return probes, nil
}

func checkAppProbe(p contract.AppProbe) error {
	kinds, port := 0, int32(0)
	if p.HTTPGet != nil {
		kinds, port = kinds+1, p.HTTPGet.Port
		if s := strings.ToUpper(p.HTTPGet.Scheme); s != "" && s != "HTTP" && s != "HTTPS" {
			return fmt.Errorf("scheme %.20q is neither HTTP nor HTTPS", p.HTTPGet.Scheme)
		}
	}
	if p.TCPSocket != nil {
		kinds, port = kinds+1, p.TCPSocket.Port
	}
	if p.GRPC != nil {
		kinds, port = kinds+1, p.GRPC.Port
	}
	if kinds != 1 {
		return errors.New("must be exactly one of httpGet, tcpSocket and grpc")
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d is not 1-65535", port)
	}
	if p.TimeoutSeconds < 0 {
		return fmt.Errorf("timeoutSeconds %d is negative", p.TimeoutSeconds)
	}
	return nil
}

// appProber runs the recorded probes.
type appProber struct {
	probes contract.AppProbes
	slots  chan struct{} // MaxAppProbesInFlight tokens
	client *http.Client

	passed, failed, overLimit atomic.Uint64
}

func newAppProber(probes contract.AppProbes) *appProber {
	dialer := &net.Dialer{}
	transport := &http.Transport{
		Proxy: nil, // the environment's proxy is the app's, never the probe's
		// Only the loopback is ever dialed: redirects leave it only by a new host name,
		// which the redirect check does not follow.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, _, err := net.SplitHostPort(addr); err != nil || host != appProbeHost {
				return nil, fmt.Errorf("app probes dial %s only, not %s", appProbeHost, addr)
			}
			return dialer.DialContext(ctx, network, addr)
		},
		// As the kubelet: no certificate check, a fresh connection per probe, h2 when the
		// app offers it over TLS, no transparent gzip.
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the kubelet's probes do not verify either
		ForceAttemptHTTP2:      true,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: appProbeHeaderLimit,
	}
	return &appProber{
		probes: probes,
		slots:  make(chan struct{}, MaxAppProbesInFlight),
		client: &http.Client{Transport: transport, CheckRedirect: sameHostRedirects},
	}
}

// sameHostRedirects is the kubelet's redirect rule: follow redirects to the same host name
// (up to 10), and stop at one to another host, whose 3xx answer then counts as a success.
func sameHostRedirects(req *http.Request, via []*http.Request) error {
	if req.URL.Hostname() != via[0].URL.Hostname() {
		return http.ErrUseLastResponse
	}
	if len(via) >= appProbeMaxRedirects {
		return fmt.Errorf("stopped after %d redirects", appProbeMaxRedirects)
	}
	return nil
}

// serve answers GET /app-health/{container}/{kind}.
func (a *appProber) serve(w http.ResponseWriter, r *http.Request) {
	path := contract.AppHealthPath(r.PathValue("container"), r.PathValue("kind"))
	p, ok := a.probes[path]
	if !ok {
		http.Error(w, "no app probe is recorded for "+path+" in this sidecar ("+contract.AppProbesEnv+")\n", http.StatusNotFound)
		return
	}
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	default:
		a.overLimit.Add(1)
		http.Error(w, fmt.Sprintf("app probe not run: %d app probes are already running in this sidecar\n", MaxAppProbesInFlight), http.StatusServiceUnavailable)
		return
	}
	timeout := appProbeDefaultTimeout
	if p.TimeoutSeconds > 0 {
		timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	// The kubelet gives up on this request after the same timeout, which cancels r.Context().
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	var what string
	var err error
	switch {
	case p.HTTPGet != nil:
		what, err = a.runHTTP(ctx, p.HTTPGet, r.Header.Get("User-Agent"))
	case p.TCPSocket != nil:
		what, err = runTCP(ctx, p.TCPSocket.Port)
	default:
		what, err = runGRPC(ctx, p.GRPC, r.Header.Get("User-Agent"))
	}
	if err != nil {
		a.failed.Add(1)
		if ctx.Err() != nil && r.Context().Err() == nil {
			err = fmt.Errorf("%w (timeout %s)", err, timeout)
		}
		http.Error(w, "app probe failed: "+what+": "+err.Error()+"\n", http.StatusServiceUnavailable)
		return
	}
	a.passed.Add(1)
	_, _ = io.WriteString(w, "ok: "+what+"\n")
}

// runHTTP is the kubelet's httpGet probe (k8s.io/kubernetes pkg/probe/http) against the
// loopback: the recorded path, headers and scheme, success on 200-399.
func (a *appProber) runHTTP(ctx context.Context, g *contract.AppProbeHTTPGet, kubeletAgent string) (string, error) {
	u, err := url.Parse(g.Path)
	if err != nil { // the kubelet passes such a path along as it is
		u = &url.URL{Path: g.Path}
	}
	u.Scheme = "http"
	if strings.EqualFold(g.Scheme, "HTTPS") {
		u.Scheme = "https"
	}
	u.Host = net.JoinHostPort(appProbeHost, strconv.Itoa(int(g.Port)))
	what := "GET " + u.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return what, err
	}
	h := http.Header{}
	for _, hd := range g.HTTPHeaders {
		h.Add(hd.Name, hd.Value)
	}
	if _, ok := h["User-Agent"]; !ok {
		if kubeletAgent == "" {
			kubeletAgent = "kube-probe/weft"
		}
		h.Set("User-Agent", kubeletAgent)
	}
	if _, ok := h["Accept"]; !ok {
		h.Set("Accept", "*/*")
	} else if h.Get("Accept") == "" {
		h.Del("Accept")
	}
	req.Header = h
	req.Host = h.Get("Host")
	resp, err := a.client.Do(req)
	if err != nil {
		return what, err
	}
	defer resp.Body.Close()
	body := make([]byte, appProbeBodyLimit)
	n, err := io.ReadFull(resp.Body, body)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return what, fmt.Errorf("reading the answer (HTTP %d): %w", resp.StatusCode, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return what, fmt.Errorf("HTTP %d: %.100q", resp.StatusCode, body[:n])
	}
	return what + ": HTTP " + strconv.Itoa(resp.StatusCode), nil
}

// runTCP is the kubelet's tcpSocket probe: the connection opens.
func runTCP(ctx context.Context, port int32) (string, error) {
	addr := net.JoinHostPort(appProbeHost, strconv.Itoa(int(port)))
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "connect " + addr, err
	}
	_ = c.Close()
	return "connected to " + addr, nil
}

// runGRPC is the kubelet's grpc probe: grpc.health.v1.Health/Check answers SERVING.
func runGRPC(ctx context.Context, g *contract.AppProbeGRPC, kubeletAgent string) (string, error) {
	addr := net.JoinHostPort(appProbeHost, strconv.Itoa(int(g.Port)))
	var svc string
	if g.Service != nil {
		svc = *g.Service
	}
	what := fmt.Sprintf("grpc.health.v1.Health/Check %q at %s", svc, addr)
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(appProbeBodyLimit)),
	}
	if kubeletAgent != "" {
		opts = append(opts, grpc.WithUserAgent(kubeletAgent))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return what, err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		return what, err
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return what, fmt.Errorf("status %s", st)
	}
	return what + ": SERVING", nil
}

// WritePrometheus reports the app probes run and refused.
func (a *appProber) WritePrometheus(w io.Writer) {
	fmt.Fprintf(w, "# HELP weft_app_probes_total App probes the sidecar ran for the kubelet (docs/probes.md), by result; over_limit: refused, %d already running.\n", MaxAppProbesInFlight)
	fmt.Fprintln(w, "# TYPE weft_app_probes_total counter")
	fmt.Fprintf(w, "weft_app_probes_total{result=\"passed\"} %d\n", a.passed.Load())
	fmt.Fprintf(w, "weft_app_probes_total{result=\"failed\"} %d\n", a.failed.Load())
	fmt.Fprintf(w, "weft_app_probes_total{result=\"over_limit\"} %d\n", a.overLimit.Load())
}
