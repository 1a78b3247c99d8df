package admin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/weftmesh/weft/contract"
)

// portOf is the port of a listener on 127.0.0.1.
func portOf(t *testing.T, addr net.Addr) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return int32(n)
}

// probeSidecar serves the metrics handler of a sidecar with probes, as the kubelet reaches it.
func probeSidecar(t *testing.T, probes contract.AppProbes) (*Server, func(path string, header ...string) (int, string)) {
	t.Helper()
	s := New(Options{AppProbes: probes})
	srv := httptest.NewServer(s.MetricsHandler())
	t.Cleanup(srv.Close)
	return s, func(path string, header ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		req.Header.Set("User-Agent", "kube-probe/1.36")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
}

func httpGetProbe(port int32, path string) contract.AppProbe {
	return contract.AppProbe{HTTPGet: &contract.AppProbeHTTPGet{Path: path, Port: port}, TimeoutSeconds: 1}
}

// TestAppProbeHTTP runs httpGet probes against a real app: its status, path, headers,
// redirects, TLS and body as the kubelet treats them.
func TestAppProbeHTTP(t *testing.T) {
	var lastUA, lastHost, lastProbeHeader, lastAccept atomic.Value
	app := http.NewServeMux()
	app.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Probe") != "" { // the readyz probe's request
			lastUA.Store(r.UserAgent())
			lastHost.Store(r.Host)
			lastProbeHeader.Store(r.Header.Get("X-Probe"))
			lastAccept.Store(r.Header.Get("Accept"))
		}
		if r.URL.RawQuery != "full=1" {
			http.Error(w, "want ?full=1", http.StatusBadRequest)
		}
	})
	app.HandleFunc("/sick", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "database unreachable"+strings.Repeat("!", 500), http.StatusInternalServerError)
	})
	app.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/healthz?full=1", http.StatusFound) })
	app.HandleFunc("/moved-to-sick", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/sick", http.StatusFound) })
	app.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	var offHostDialed atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { offHostDialed.Store(true) }))
	defer other.Close()
	// The other server is on the loopback too, named differently: a different host name.
	offHost := "http://localhost:" + strconv.Itoa(int(portOf(t, other.Listener.Addr()))) + "/"
	app.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, offHost, http.StatusFound) })
	app.HandleFunc("/teapot", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	plain := httptest.NewServer(app)
	defer plain.Close()
	tlsApp := httptest.NewTLSServer(app) // self-signed: the kubelet does not verify, nor does the sidecar
	defer tlsApp.Close()
	port, tlsPort := portOf(t, plain.Listener.Addr()), portOf(t, tlsApp.Listener.Addr())

	headers := httpGetProbe(port, "/healthz?full=1")
	headers.HTTPGet.HTTPHeaders = []contract.AppProbeHeader{{Name: "X-Probe", Value: "weft"}, {Name: "Host", Value: "web.example"}}
	https := httpGetProbe(tlsPort, "healthz?full=1") // no leading slash, as users write it
	https.HTTPGet.Scheme = "HTTPS"
	probes := contract.AppProbes{
		"/app-health/web/readyz":    headers,
		"/app-health/web/livez":     httpGetProbe(port, "/sick"),
		"/app-health/web/startupz":  httpGetProbe(port, "/moved"),
		"/app-health/moved/readyz":  httpGetProbe(port, "/moved-to-sick"),
		"/app-health/loop/readyz":   httpGetProbe(port, "/loop"),
		"/app-health/away/readyz":   httpGetProbe(port, "/elsewhere"),
		"/app-health/tls/readyz":    https,
		"/app-health/teapot/readyz": httpGetProbe(port, "/teapot"),
		"/app-health/none/readyz":   httpGetProbe(port, "/nothing-here"),
	}
	_, ask := probeSidecar(t, probes)

	for _, tc := range []struct {
		path     string
		code     int
		bodyHave string
	}{
		{"/app-health/web/readyz", 200, "ok: GET http://127.0.0.1:" + strconv.Itoa(int(port)) + "/healthz?full=1: HTTP 200"},
		{"/app-health/web/livez", 503, `app probe failed: GET http://127.0.0.1:` + strconv.Itoa(int(port)) + `/sick: HTTP 500: "database unreachable!!!`},
		{"/app-health/web/startupz", 200, "HTTP 200"},                                              // a same-host redirect is followed
		{"/app-health/moved/readyz", 503, "HTTP 500"},                                              // ... to where it leads
		{"/app-health/loop/readyz", 503, "stopped after 10 redirects"},                             // ... ten times at most
		{"/app-health/away/readyz", 200, "HTTP 302"},                                               // another host: not followed, the 3xx is a success
		{"/app-health/tls/readyz", 200, "GET https://127.0.0.1:"},                                  // HTTPS without verification
		{"/app-health/teapot/readyz", 503, "HTTP 418"},                                             // 4xx fails
		{"/app-health/none/readyz", 503, "HTTP 404"},                                               // so does the app's 404
		{"/app-health/ghost/readyz", 404, "no app probe is recorded for /app-health/ghost/readyz"}, // an unknown container
		{"/app-health/web/deadz", 404, "no app probe is recorded"},
		{"/app-health/web/readyz/extra", 404, ""},
	} {
		code, body := ask(tc.path)
		if code != tc.code || !strings.Contains(body, tc.bodyHave) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.bodyHave)
		}
		if len(body) > 400 {
			t.Errorf("GET %s answered %d bytes; the reason should be short", tc.path, len(body))
		}
	}
	if offHostDialed.Load() {
		t.Error("a redirect to another host was followed")
	}
	if ua := lastUA.Load(); ua != "kube-probe/1.36" {
		t.Errorf("the app saw User-Agent %q, want the kubelet's", ua)
	}
	if h, x, a := lastHost.Load(), lastProbeHeader.Load(), lastAccept.Load(); h != "web.example" || x != "weft" || a != "*/*" {
		t.Errorf("the app saw Host %q, X-Probe %q, Accept %q; want the probe's web.example and weft, and */*", h, x, a)
	}
}

// TestAppProbeHTTPTimeoutAndBody: a slow app fails the probe at timeoutSeconds, and a huge
// body is not read past the kubelet's 10 KiB.
func TestAppProbeHTTPTimeoutAndBody(t *testing.T) {
	slowDone := make(chan error, 1)
	bigWrite := make(chan error, 1)
	app := http.NewServeMux()
	app.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done(): // the sidecar gave up and closed the connection
			slowDone <- r.Context().Err()
		case <-time.After(30 * time.Second):
			slowDone <- fmt.Errorf("the sidecar waited 30 s for a probe with timeoutSeconds 1")
		}
	})
	app.HandleFunc("/slow-body", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	app.HandleFunc("/big", func(w http.ResponseWriter, _ *http.Request) {
		chunk := make([]byte, 1<<20)
		var err error
		for i := 0; i < 256 && err == nil; i++ { // 256 MiB, far past any socket buffer
			_, err = w.Write(chunk)
		}
		bigWrite <- err
	})
	srv := httptest.NewServer(app)
	defer srv.Close()
	port := portOf(t, srv.Listener.Addr())
	_, ask := probeSidecar(t, contract.AppProbes{
		"/app-health/app/readyz":   httpGetProbe(port, "/slow"),
		"/app-health/app/livez":    httpGetProbe(port, "/slow-body"),
		"/app-health/app/startupz": httpGetProbe(port, "/big"),
	})
	start := time.Now()
	code, body := ask("/app-health/app/readyz")
	if code != 503 || !strings.Contains(body, "timeout 1s") {
		t.Errorf("slow app: %d %q, want 503 naming the 1s timeout", code, body)
	}
	if err := <-slowDone; err == nil || time.Since(start) > 20*time.Second {
		t.Errorf("the app's request ended with %v after %s, want it cancelled by the timeout", err, time.Since(start))
	}
	if code, body := ask("/app-health/app/livez"); code != 503 {
		t.Errorf("an app that sends headers then stalls its body: %d %q, want 503", code, body)
	}
	if code, body := ask("/app-health/app/startupz"); code != 200 {
		t.Errorf("a 200 with a 256 MiB body: %d %q, want 200 (the kubelet reads 10 KiB and stops)", code, body)
	}
	if err := <-bigWrite; err == nil {
		t.Error("the app wrote all 256 MiB: the sidecar read the whole body")
	}
}

// TestAppProbeTCP: tcpSocket probes connect to a real listener, and fail on a closed port.
func TestAppProbeTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := portOf(t, closed.Addr())
	closed.Close()
	_, ask := probeSidecar(t, contract.AppProbes{
		"/app-health/db/livez":  {TCPSocket: &contract.AppProbePort{Port: portOf(t, ln.Addr())}},
		"/app-health/db/readyz": {TCPSocket: &contract.AppProbePort{Port: closedPort}},
	})
	if code, body := ask("/app-health/db/livez"); code != 200 || !strings.Contains(body, "connected to 127.0.0.1:") {
		t.Errorf("open port: %d %q", code, body)
	}
	if code, body := ask("/app-health/db/readyz"); code != 503 || !strings.Contains(body, "connection refused") {
		t.Errorf("closed port: %d %q, want 503 connection refused", code, body)
	}
	// The probe answers once it has connected; the accept loop counts it a moment later.
	for deadline := time.Now().Add(5 * time.Second); accepted.Load() < 1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	ln.Close()
	if accepted.Load() != 1 {
		t.Errorf("the listener accepted %d connections, want 1", accepted.Load())
	}
}

// TestAppProbeGRPC: grpc probes ask a real grpc.health.v1 server.
func TestAppProbeGRPC(t *testing.T) {
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("weft.Down", healthpb.HealthCheckResponse_NOT_SERVING)
	withHealth := grpc.NewServer()
	healthpb.RegisterHealthServer(withHealth, hs)
	without := grpc.NewServer() // no health service
	serve := func(s *grpc.Server) int32 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = s.Serve(ln) }()
		t.Cleanup(s.Stop)
		return portOf(t, ln.Addr())
	}
	port, bare := serve(withHealth), serve(without)
	svc := func(s string) *string { return &s }
	_, ask := probeSidecar(t, contract.AppProbes{
		"/app-health/api/readyz":   {GRPC: &contract.AppProbeGRPC{Port: port}},
		"/app-health/api/livez":    {GRPC: &contract.AppProbeGRPC{Port: port, Service: svc("weft.Down")}},
		"/app-health/api/startupz": {GRPC: &contract.AppProbeGRPC{Port: port, Service: svc("weft.Unknown")}},
		"/app-health/bare/readyz":  {GRPC: &contract.AppProbeGRPC{Port: bare}},
	})
	for _, tc := range []struct {
		path, have string
		code       int
	}{
		{"/app-health/api/readyz", "SERVING", 200},
		{"/app-health/api/livez", "status NOT_SERVING", 503},
		{"/app-health/api/startupz", "NotFound", 503},
		{"/app-health/bare/readyz", "Unimplemented", 503},
	} {
		if code, body := ask(tc.path); code != tc.code || !strings.Contains(body, tc.have) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.have)
		}
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if code, _ := ask("/app-health/api/readyz"); code != 503 {
		t.Errorf("after the app turned NOT_SERVING: %d, want 503", code)
	}
}

// TestAppProbesBounded: probes past MaxAppProbesInFlight are refused at once, never queued,
// and the ones in flight still finish.
func TestAppProbesBounded(t *testing.T) {
	release := make(chan struct{})
	var inApp, maxInApp atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := inApp.Add(1)
		for m := maxInApp.Load(); n > m && !maxInApp.CompareAndSwap(m, n); m = maxInApp.Load() {
		}
		<-release
		inApp.Add(-1)
	}))
	defer srv.Close()
	p := httpGetProbe(portOf(t, srv.Listener.Addr()), "/")
	p.TimeoutSeconds = 60
	s, ask := probeSidecar(t, contract.AppProbes{"/app-health/app/readyz": p})

	const n = 3 * MaxAppProbesInFlight
	codes := make(chan int, n)
	var wg sync.WaitGroup
	for range MaxAppProbesInFlight {
		wg.Add(1)
		go func() { defer wg.Done(); c, _ := ask("/app-health/app/readyz"); codes <- c }()
	}
	waitFor(t, "the first probes to hold every slot", func() bool { return inApp.Load() == MaxAppProbesInFlight })
	for range n - MaxAppProbesInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, body := ask("/app-health/app/readyz")
			if c == 503 && !strings.Contains(body, "already running") {
				t.Errorf("refused probe said %q", body)
			}
			codes <- c
		}()
	}
	waitFor(t, "the probes past the bound to be refused", func() bool { return s.probes.overLimit.Load() == n-MaxAppProbesInFlight })
	close(release)
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[200] != MaxAppProbesInFlight || count[503] != n-MaxAppProbesInFlight {
		t.Errorf("answers %v, want %d × 200 and %d × 503", count, MaxAppProbesInFlight, n-MaxAppProbesInFlight)
	}
	if m := maxInApp.Load(); m != MaxAppProbesInFlight {
		t.Errorf("the app saw %d probes at once, want %d", m, MaxAppProbesInFlight)
	}
	_, stats := get(t, s.MetricsHandler(), "/stats")
	for _, line := range []string{`weft_app_probes_total{result="passed"} 16`, `weft_app_probes_total{result="over_limit"} 32`} {
		if !strings.Contains(stats, line) {
			t.Errorf("/stats lacks %q:\n%s", line, stats)
		}
	}
}

// TestAppProbeKubeletGivesUp: when the kubelet closes its request, the probe stops and its
// slot is free again.
func TestAppProbeKubeletGivesUp(t *testing.T) {
	appDone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		close(appDone)
	}))
	defer srv.Close()
	p := httpGetProbe(portOf(t, srv.Listener.Addr()), "/")
	p.TimeoutSeconds = 3600
	s := New(Options{AppProbes: contract.AppProbes{"/app-health/app/readyz": p}})
	side := httptest.NewServer(s.MetricsHandler())
	defer side.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, side.URL+"/app-health/app/readyz", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("answered %d to a kubelet that gave up", resp.StatusCode)
	}
	select {
	case <-appDone:
	case <-time.After(20 * time.Second):
		t.Fatal("the probe kept running after the kubelet closed its request")
	}
	// The handler returns just after the app saw the close.
	waitFor(t, "the probe's slot to be free", func() bool { return len(s.probes.slots) == 0 })
}

// waitFor polls cond for up to 20 s (a bound for a loaded machine, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20 s for %s", what)
		}
	}
}

func TestParseAppProbes(t *testing.T) {
	valid := `{"/app-health/web/readyz":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTPS"},"timeoutSeconds":3},` +
		`"/app-health/web/livez":{"tcpSocket":{"port":8080}},"/app-health/web-2/startupz":{"grpc":{"port":9090,"service":"x"}}}`
	got, err := ParseAppProbes(valid)
	if err != nil || len(got) != 3 || got["/app-health/web/readyz"].HTTPGet.Port != 8080 || got["/app-health/web/readyz"].TimeoutSeconds != 3 {
		t.Fatalf("valid record: %v %+v", err, got)
	}
	if got, err := ParseAppProbes(""); err != nil || got != nil {
		t.Errorf("empty: %v %v, want none", got, err)
	}
	for _, tc := range []struct{ name, in, want string }{
		{"too long", `{"/app-health/a/readyz":{"tcpSocket":{"port":1}},"x":"` + strings.Repeat("x", contract.MaxAppProbesBytes) + `"}`, "more than 65536"},
		{"garbled", `{"/app-health/web/readyz":{"httpGet":{`, "not a JSON object"},
		{"not an object", `[1,2]`, "not a JSON object"},
		{"binary", "\x00\xff\xfe", "not a JSON object"},
		{"bad key", `{"/app-health/../../etc/readyz":{"tcpSocket":{"port":1}}}`, "is not /app-health/"},
		{"bad kind", `{"/app-health/web/deadz":{"tcpSocket":{"port":1}}}`, "is not /app-health/"},
		{"upper-case container", `{"/app-health/Web/readyz":{"tcpSocket":{"port":1}}}`, "is not /app-health/"},
		{"no handler", `{"/app-health/web/readyz":{"timeoutSeconds":1}}`, "exactly one of"},
		{"two handlers", `{"/app-health/web/readyz":{"tcpSocket":{"port":1},"grpc":{"port":1}}}`, "exactly one of"},
		{"port 0", `{"/app-health/web/readyz":{"tcpSocket":{"port":0}}}`, "port 0 is not"},
		{"port too big", `{"/app-health/web/readyz":{"httpGet":{"port":70000}}}`, "port 70000 is not"},
		{"named port", `{"/app-health/web/readyz":{"httpGet":{"port":"http"}}}`, "not a JSON object"},
		{"negative timeout", `{"/app-health/web/readyz":{"tcpSocket":{"port":1},"timeoutSeconds":-1}}`, "negative"},
		{"scheme", `{"/app-health/web/readyz":{"httpGet":{"port":1,"scheme":"gopher"}}}`, "neither HTTP nor HTTPS"},
	} {
		if _, err := ParseAppProbes(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}
