package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/xds"
)

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(meshv1alpha1.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))
}

// ManagerSelector selects the manager's pods (config/manager).
const ManagerSelector = "control-plane=weft-manager"

// maxDebugBody bounds one answer of the manager's debug endpoints (64 MiB: a config dump of
// thousands of clusters is a few MiB).
const maxDebugBody = 64 << 20

// kube is a connection to the cluster the flags select.
type kube struct {
	config    *rest.Config
	client    client.Client
	clientset kubernetes.Interface
	namespace string
	// nsExplicit is true when -n was given.
	nsExplicit bool
}

func (o *options) kube() (*kube, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.context}
	overrides.Context.Namespace = o.namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig (set --kubeconfig or KUBECONFIG; the local mesh writes /tmp/weft-dev/kubeconfig): %w", err)
	}
	cfg.Timeout = o.timeout
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, fmt.Errorf("reading the namespace from the kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building a Kubernetes client: %w", err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("building a Kubernetes client for %s: %w", cfg.Host, err)
	}
	return &kube{config: cfg, client: cl, clientset: cs, namespace: ns, nsExplicit: o.namespace != ""}, nil
}

// manager is one manager replica's debug endpoints.
type manager struct {
	// name is the pod name, or the URL when given by --manager-url.
	name string
	base string
	stop func()
}

var errNoManager = errors.New("no Weft manager found")

// managers connects to every manager replica: --manager-url when given; else a
// port-forward to each running manager pod (the debug port listens on the pod's loopback,
// which a port-forward reaches and nothing else does); else, when the API server listens on
// an address of this host and no manager pod exists (the local mesh runs the manager as a host
// process), http://127.0.0.1:<DebugPort>. Call the returned stop when done.
func (o *options) managers(ctx context.Context, k *kube) ([]manager, func(), error) {
	if o.managerURL != "" {
		u, err := url.Parse(o.managerURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, nil, fmt.Errorf("--manager-url=%q: want a URL such as http://127.0.0.1:%d", o.managerURL, xds.DebugPort)
		}
		return []manager{{name: o.managerURL, base: strings.TrimSuffix(o.managerURL, "/")}}, func() {}, nil
	}
	if k == nil {
		return nil, nil, errors.New("no --manager-url and no cluster to find the manager in")
	}
	pods, err := k.clientset.CoreV1().Pods(o.managerNS).List(ctx, metaList(ManagerSelector))
	if err != nil {
		return nil, nil, fmt.Errorf("listing the manager's pods in %s: %w", o.managerNS, err)
	}
	var out []manager
	stopAll := func() {
		for _, m := range out {
			m.stop()
		}
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		base, stop, err := portForward(ctx, k, p.Namespace, p.Name, xds.DebugPort)
		if err != nil {
			stopAll()
			return nil, nil, fmt.Errorf("port-forward to manager pod %s/%s port %d (needs create on pods/portforward in %s; or pass --manager-url): %w",
				p.Namespace, p.Name, xds.DebugPort, o.managerNS, err)
		}
		out = append(out, manager{name: p.Name, base: base, stop: stop})
	}
	if len(out) > 0 {
		return out, stopAll, nil
	}
	if onThisHost(k.config.Host) {
		base := "http://127.0.0.1:" + strconv.Itoa(xds.DebugPort)
		return []manager{{name: "local", base: base, stop: func() {}}}, func() {}, nil
	}
	return nil, nil, fmt.Errorf("%w: no running pod labelled %s in namespace %s (install Weft, pass --manager-namespace, or --manager-url)",
		errNoManager, ManagerSelector, o.managerNS)
}

// loopbackHost reports whether an API server URL is on this host's loopback.
func onThisHost(host string) bool {
	u, err := url.Parse(host)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	// The local mesh's API server listens on its bridge address, which is this host's.
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// portForward forwards a free port on 127.0.0.1 to port of the pod and returns its URL.
func portForward(ctx context.Context, k *kube, ns, pod string, port int) (string, func(), error) {
	transport, upgrader, err := spdy.RoundTripperFor(k.config)
	if err != nil {
		return "", nil, err
	}
	u := k.clientset.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stopCh, readyCh := make(chan struct{}), make(chan struct{})
	var errOut strings.Builder
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stopCh, readyCh, io.Discard, &errOut)
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	stop := func() { close(stopCh) }
	select {
	case <-readyCh:
	case err := <-done:
		return "", nil, fmt.Errorf("%w %s", err, errOut.String())
	case <-ctx.Done():
		stop()
		return "", nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		stop()
		return "", nil, fmt.Errorf("port-forward gave no local port: %w", err)
	}
	return "http://127.0.0.1:" + strconv.Itoa(int(ports[0].Local)), stop, nil
}

// get fetches path from a manager's debug endpoints into v.
func (m manager) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+path, nil)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("manager %s is unreachable (is it running, with --debug-bind-address? in the local mesh pass --manager-url http://127.0.0.1:%d): %w", m.name, xds.DebugPort, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDebugBody+1))
	if err != nil {
		return fmt.Errorf("reading %s from manager %s: %w", path, m.name, err)
	}
	if len(body) > maxDebugBody {
		return fmt.Errorf("manager %s answered %s with more than %d MiB", m.name, path, maxDebugBody>>20)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return &managerError{code: resp.StatusCode, msg: e.Error}
		}
		return &managerError{code: resp.StatusCode, msg: fmt.Sprintf("manager %s answered %s with HTTP %d (is --manager-url a Weft manager's debug address?)", m.name, path, resp.StatusCode)}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("manager %s answered %s with something that is not its JSON (is --manager-url a Weft manager's debug address?): %w", m.name, path, err)
	}
	return nil
}

// managerError is an error the manager answered with.
type managerError struct {
	code int
	msg  string
}

func (e *managerError) Error() string { return e.msg }

// syncz reads every manager's connected sidecars; each node is tagged with its manager.
func syncz(ctx context.Context, ms []manager) ([]nodeRow, error) {
	var out []nodeRow
	for _, m := range ms {
		var z xds.SyncZ
		if err := m.get(ctx, "/debug/syncz", &z); err != nil {
			return nil, err
		}
		for _, n := range z.Nodes {
			out = append(out, nodeRow{NodeSync: n, Manager: m.name})
		}
	}
	return out, nil
}

// nodeRow is a sidecar as proxy-status prints it.
type nodeRow struct {
	xds.NodeSync `json:",inline"`
	Manager      string `json:"manager"`
}
