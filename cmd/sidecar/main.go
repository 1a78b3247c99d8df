// Command sidecar is the Weft sidecar: it connects to the control plane over ADS and
// serves the outbound and inbound HTTP listeners plus the admin endpoints. Flags and
// wiring only; the behaviour lives in sidecar/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/activator"
	"github.com/weftmesh/weft/sidecar/admin"
	"github.com/weftmesh/weft/sidecar/capture"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	"github.com/weftmesh/weft/sidecar/upstream"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		os.Exit(1)
	}
}

type flags struct {
	xdsAddress, nodeID, namespace, pod, labels, function string
	podIP                                                string
	appPort                                              int
	adminAddress, metricsAddress, staticConfig           string
	redisProxy                                           string
	drainTimeout                                         time.Duration
	concurrency                                          int
	releaseMemory, eventLoop                             bool
	// inboundCapture: the pod's inbound is captured though it has no app port (a pod that
	// serves only TCP); the control plane then sends an inbound listener with only the TCP
	// passthrough.
	inboundCapture bool
	telemetry      telemetryFlags
	identity       identityFlags
	// xdsCAFile and xdsTokenFile authenticate the sidecar to the control plane.
	xdsCAFile, xdsTokenFile string
}

func parseFlags() flags {
	var f flags
	pod, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	flag.StringVar(&f.xdsAddress, "xds-address", "127.0.0.1:"+strconv.Itoa(contract.XDSPort), "control plane ADS address (host:port)")
	flag.StringVar(&f.xdsCAFile, "xds-ca-file", contract.CAPath, "CA bundle (PEM) the control plane's certificate is verified with; when the file does not exist the sidecar speaks plaintext and sends no token")
	flag.StringVar(&f.xdsTokenFile, "xds-token-file", contract.TokenPath, "projected ServiceAccount token (audience "+contract.TokenAudience+") presented to the control plane; read again for every stream")
	flag.StringVar(&f.nodeID, "node-id", "", "xDS node id (default POD_NAME.POD_NAMESPACE)")
	flag.StringVar(&f.namespace, "namespace", ns, "pod namespace (default $POD_NAMESPACE)")
	flag.StringVar(&f.pod, "pod", pod, "pod name (default $POD_NAME)")
	flag.StringVar(&f.podIP, "pod-ip", os.Getenv("POD_IP"), "this pod's IP (default $POD_IP): what useSourceIP hashes for the app's calls over loopback")
	flag.StringVar(&f.labels, "labels", os.Getenv("POD_LABELS"), "pod labels k=v,... (default $POD_LABELS)")
	flag.StringVar(&f.function, "function", os.Getenv("WEFT_FUNCTION"), "MeshFunction <namespace>/<name> this pod serves, if any")
	flag.IntVar(&f.appPort, "app-port", 0, "local app port the inbound listener forwards to (0: no inbound listener, unless --"+contract.FlagInboundCapture+")")
	flag.BoolVar(&f.inboundCapture, contract.FlagInboundCapture, false, "the pod's inbound ports are captured though it has no app port (a pod that serves only TCP): serve an inbound listener that passes them to 127.0.0.1, terminating mesh TLS")
	flag.StringVar(&f.adminAddress, "admin-address", "127.0.0.1:"+strconv.Itoa(contract.AdminPort), "admin API address (keep it on localhost)")
	flag.StringVar(&f.metricsAddress, "metrics-address", ":"+strconv.Itoa(contract.MetricsPort), "read-only /stats and /ready address on the pod IP")
	flag.StringVar(&f.staticConfig, "static-config", "", "serve Envoy resources from this JSON file instead of a control plane")
	flag.StringVar(&f.redisProxy, "redis-proxy", "", "run as the standalone proxy of RedisProxy <namespace>/<name>: its pool listens on all addresses")
	flag.DurationVar(&f.drainTimeout, "drain-timeout", 20*time.Second, "how long SIGTERM waits for in-flight requests")
	flag.IntVar(&f.concurrency, "concurrency", 1, "worker threads that run proxy code (Go's GOMAXPROCS); 0: one per CPU the container may use")
	flag.BoolVar(&f.releaseMemory, "release-startup-memory", true, "after the first config, drop the executable's pages only start-up used (Linux)")
	flag.BoolVar(&f.eventLoop, "http-event-loop", true, "serve HTTP/1.1 (outbound and inbound) from event loops, one per worker thread; false: a goroutine per connection")
	addTelemetryFlags(&f.telemetry) // telemetry.go
	addIdentityFlags(&f.identity)   // identity.go
	flag.Parse()
	if f.nodeID == "" {
		f.nodeID = f.pod + "." + f.namespace
	}
	return f
}

// parsePodIP reads --pod-ip; empty is allowed (a sidecar run by hand), anything else must
// be an IP address.
func parsePodIP(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--pod-ip %q is not an IP address: %w", s, err)
	}
	return ip.Unmap(), nil
}

// nodeFor builds the node identity and metadata docs/xds-contract.md specifies.
func nodeFor(f flags) (*corev3.Node, error) {
	labels := map[string]any{}
	for _, kv := range strings.Split(f.labels, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--labels: %q is not k=v", kv)
		}
		labels[k] = v
	}
	md := map[string]any{contract.NodeNamespace: f.namespace, contract.NodePod: f.pod, contract.NodeLabels: labels}
	if f.function != "" {
		md[contract.NodeFunction] = f.function
	}
	if f.appPort != 0 {
		md[contract.NodeAppPort] = f.appPort
	}
	if f.redisProxy != "" {
		md[contract.NodeRedisProxy] = f.redisProxy
	}
	if f.inboundCapture {
		md[contract.NodeInboundCapture] = true
	}
	s, err := structpb.NewStruct(md)
	if err != nil {
		return nil, fmt.Errorf("building node metadata: %w", err)
	}
	return &corev3.Node{Id: f.nodeID, Metadata: s}, nil
}

func run() error {
	f := parseFlags()
	setConcurrency(f.concurrency)
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	node, err := nodeFor(f)
	if err != nil {
		return err
	}
	appProbes, err := admin.ParseAppProbes(os.Getenv(contract.AppProbesEnv)) // docs/probes.md
	if err != nil {
		return fmt.Errorf("%w; the injector writes it from the pod's probes: re-create the pod", err)
	}
	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	bg, cancelBG := context.WithCancel(context.Background())
	defer cancelBG()

	dial, secure, err := xdsclient.Credentials(f.xdsCAFile, f.xdsTokenFile)
	if err != nil {
		return err
	}
	if !secure {
		log.Warn("no control-plane CA bundle: connecting in plaintext without a token, which only a control plane run with --xds-insecure accepts", "caFile", f.xdsCAFile)
	}
	signals, err := dialSignals(f.xdsAddress, dial)
	if err != nil {
		return fmt.Errorf("connecting to the autoscaler at %s: %w", f.xdsAddress, err)
	}
	defer signals.Close()
	rep := activator.NewReporter(signals)
	rep.OnError = func(err error) { log.Warn("demand signal not delivered", "err", err) }
	act := activator.New(clock.RealClock{}, rep)
	idm, err := startIdentity(bg, f.identity, secure, signals, log) // identity.go
	if err != nil {
		return err
	}

	var current atomic.Pointer[config.Config]
	calls := newAsyncCalls(log, node.GetId(), f.function, f.labels, f.appPort, current.Load)
	ups := upstream.NewManager(bg, clock.RealClock{})
	if idm != nil {
		ups.SetMeshTLS(idm)
	}
	podIP, err := parsePodIP(f.podIP)
	if err != nil {
		return err
	}
	tel, closeTelemetry, err := buildTelemetry(f, f.telemetry) // telemetry.go
	if err != nil {
		return err
	}
	defer closeTelemetry()
	ref := &httpRef{}
	capt := capture.New(capture.Options{Upstreams: ups, HTTP: ref, Logger: log, Telemetry: tel, InboundTLS: captureTLS(idm)})
	px := httpproxy.New(httpproxy.Options{Upstreams: ups, Logger: log, Holder: holder{act}, Watcher: act, Async: calls,
		GoroutinePerConnection: !f.eventLoop, Function: f.function, PodIP: podIP, Diverter: capt, Telemetry: tel,
		InboundTLS: inboundTLS(idm)})
	ref.p = px
	redis := newRedisPools(log, f.redisProxy != "", redisTLS(idm))
	if idm != nil {
		// Pool listeners take mutual TLS next to plaintext: a standalone proxy's callers,
		// and other pods reaching a pool that listens beyond loopback, are judged by their
		// verified identity (docs/authorization.md, "Redis pools").
		redis.tls = idm
	}
	var status func() any
	fnNS, fnName, _ := strings.Cut(f.function, "/") // empty when the pod serves no function
	apply := func(c *config.Config) {
		// First: the listeners px starts offer their connections to it.
		if err := capt.Apply(c); err != nil {
			log.Error("applying config", "err", err)
		}
		if err := px.Apply(c); err != nil {
			log.Error("applying config", "err", err)
		}
		redis.Apply(c)
		if f.function != "" {
			// The pod's own function cluster carries its containerConcurrency, which this
			// sidecar enforces on the inbound listener (Knative's queue-proxy breaker).
			if fc := c.Clusters[contract.FunctionClusterName(fnNS, fnName)]; fc != nil && fc.Function != nil {
				px.SetInboundConcurrency(fc.Function.ContainerConcurrency)
			}
		}
		current.Store(c)
		calls.Apply(c)
	}
	if f.function != "" && f.appPort != 0 {
		sampler := newStatsSampler(rep, f.function, f.pod, func() *httpproxy.Listener { return px.Listener(contract.InboundListenerName) }, log)
		go sampler.Run(bg)
	}
	if f.staticConfig != "" {
		cfg, err := xdsclient.LoadStatic(f.staticConfig)
		if err != nil {
			return err
		}
		apply(cfg)
	} else {
		cl := xdsclient.New(xdsclient.Options{Address: f.xdsAddress, Node: node, Logger: log, Applier: xdsclient.ApplierFunc(apply), DialOptions: dial})
		status = func() any { return cl.Status() }
		go func() { _ = cl.Run(bg) }()
	}

	aopts := admin.Options{Config: current.Load, Status: status,
		Exchanges: func(minAge time.Duration) any { return px.Exchanges(minAge) }, AppProbes: appProbes}
	if idm != nil {
		aopts.Identity = idm.Status
	}
	adm := admin.New(aopts)
	adm.AddStats(mtlsStats{px})
	adm.AddStats(px)
	adm.AddStats(captureStats{capt, px})
	adm.AddStats(activatorStats{act})
	adm.AddStats(redis)
	adm.AddStats(calls)
	if tel != nil && f.telemetry.istioMetrics {
		adm.AddStats(tel)
	}
	servers := serveAdmin(log, adm, f.adminAddress, f.metricsAddress)
	log.Info("sidecar started", "node", node.GetId(), "xds", f.xdsAddress, "admin", f.adminAddress)
	if f.releaseMemory {
		go releaseMemoryAfterStartup(bg, log, func() bool { return current.Load() != nil })
	}
	<-sigCtx.Done()

	log.Info("draining", "timeout", f.drainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), f.drainTimeout)
	defer cancel()
	capt.Close() // the inbound listener it binds for a pod that serves only TCP
	err = px.Shutdown(dctx)
	redis.Shutdown(dctx)
	calls.Shutdown(dctx)
	for _, s := range servers {
		_ = s.Close()
	}
	if err != nil {
		return fmt.Errorf("draining in-flight requests: %w", err)
	}
	return nil
}

// serveAdmin serves the admin endpoints and the metrics on their own listeners; the caller
// closes the returned servers on shutdown.
func serveAdmin(log *slog.Logger, adm *admin.Server, adminAddr, metricsAddr string) []*http.Server {
	servers := []*http.Server{
		{Addr: adminAddr, Handler: adm.Handler(), ReadHeaderTimeout: 10 * time.Second},
		{Addr: metricsAddr, Handler: adm.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second},
	}
	for _, s := range servers {
		go func() {
			if err := s.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server stopped", "address", s.Addr, "err", err)
			}
		}()
	}
	return servers
}

// releaseMemoryAfterStartup waits until the first complete config is in (start-up is over),
// then returns the memory start-up used to the OS.
func releaseMemoryAfterStartup(ctx context.Context, log *slog.Logger, configured func() bool) {
	for !configured() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	time.Sleep(time.Second)
	n, err := releaseStartupMemory()
	if err != nil {
		log.Warn("releasing start-up memory", "err", err)
		return
	}
	log.Info("released start-up memory", "mappedBytes", n)
}

// setConcurrency applies --concurrency. The default is one thread, as Linkerd's proxy:
// a sidecar should not compete with its app for cores, and with one thread a goroutine
// woken by the network runs on the thread that is already awake instead of waking a
// second one (measured: Redis at pipeline depth 1 costs 6.8 µs of CPU per request on
// one thread and 10.5 µs on two, see BENCHMARKS.md). An explicit GOMAXPROCS in the
// environment wins over the default, not over the flag.
func setConcurrency(n int) {
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "concurrency" })
	if !explicit && os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if n <= 0 {
		runtime.SetDefaultGOMAXPROCS() // CPUs, lowered by a container CPU limit, and kept current
		return
	}
	runtime.GOMAXPROCS(n)
}
