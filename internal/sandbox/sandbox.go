// Package sandbox is the local mesh behind `weft dev`: real etcd, kube-apiserver and
// kube-controller-manager, the Weft manager as a process, and a node agent (agent.go) that
// plays scheduler and kubelet, running each Pod's containers as local processes in their own
// network namespace on a bridge. It takes binaries and manifests from the clone and produces
// a cluster kubectl can talk to; everything it creates is named weft-* and tracked through a
// state dir, so a crashed run is cleaned up by the next one.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/inject"
	"github.com/weftmesh/weft/internal/k8sbin"
)

// Options configure a local mesh.
type Options struct {
	StateDir  string       // logs, kubeconfig, etcd data; default /tmp/weft-dev
	BinDir    string       // bin/manager, bin/sidecar, bin/echo, ...
	AssetsDir string       // kube-apiserver, etcd, kube-controller-manager
	CRDDir    string       // config/crd/bases
	PodCIDR   netip.Prefix // default 10.244.0.0/16
	Bridge    string       // default weft0
	NodeName  string       // default weft-dev
	XDSPort   int          // default contract.XDSPort (18000), on the bridge address
	// ServiceCIDR is the ClusterIP range; default 10.96.0.0/16.
	ServiceCIDR netip.Prefix
	// ClusterDNS is the kube-dns Service's ClusterIP; default the range's 10th address
	// (10.96.0.10). ClusterDomain is the cluster's DNS domain; default cluster.local.
	ClusterDNS    netip.Addr
	ClusterDomain string
	// DNSUpstreams are where CoreDNS forwards names outside the cluster domain (ip or
	// ip:port); none (the default) answers them SERVFAIL, the local mesh being offline.
	DNSUpstreams []string
	// KubeProxyPath and CoreDNSPath are the node binaries; empty means found or built by
	// k8sbin.ResolveMesh (cached in ~/.cache/weft/mesh).
	KubeProxyPath, CoreDNSPath string
	Images                     *Images
	// Registry, when set (host:port), is where an OCI registry is served in process for the
	// mesh's lifetime (registry.go); the node agent pulls images named under it and runs them
	// from their own root (rootfs.go). Other images still map to programs.
	Registry string
	// ManagerArgs are added to the manager's command line.
	ManagerArgs []string
	// NoManager starts no manager on the host (nor its webhook configuration): the mesh
	// waits for one installed from dist/install.yaml to run as a pod (docs/install.md).
	NoManager bool
	// Manager, when set, lets the caller stop the manager Run starts and start it again
	// (manager.go): the e2e test of dist/install.yaml runs the manager as a pod meanwhile.
	Manager *ManagerSwitch
	Out     io.Writer // progress for the user
	Log     logr.Logger
}

func (o *Options) defaults() {
	if o.StateDir == "" {
		o.StateDir = filepath.Join(os.TempDir(), "weft-dev")
	}
	if !o.PodCIDR.IsValid() {
		o.PodCIDR = netip.MustParsePrefix("10.244.0.0/16")
	}
	if o.Bridge == "" {
		o.Bridge = prefix + "0"
	}
	if o.NodeName == "" {
		o.NodeName = "weft-dev"
	}
	if o.XDSPort == 0 {
		o.XDSPort = contract.XDSPort
	}
	if !o.ServiceCIDR.IsValid() {
		o.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	}
	if !o.ClusterDNS.IsValid() {
		o.ClusterDNS = dnsServiceIP(o.ServiceCIDR)
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	if o.Images == nil {
		o.Images = NewImages(o.BinDir)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// Kubeconfig is where Run writes the admin kubeconfig for a state dir.
func Kubeconfig(stateDir string) string { return filepath.Join(stateDir, "kubeconfig") }

// ReadyFile appears in the state dir once the mesh serves; scripts wait for it.
func ReadyFile(stateDir string) string { return filepath.Join(stateDir, "ready") }

// Run starts the local mesh, serves until ctx ends, then tears everything down.
func Run(ctx context.Context, o Options) (err error) {
	o.defaults()
	say := func(format string, args ...any) { fmt.Fprintf(o.Out, "weft dev: "+format+"\n", args...) }
	if !o.ServiceCIDR.Contains(o.ClusterDNS) {
		return fmt.Errorf("cluster DNS address %s is outside the service range %s", o.ClusterDNS, o.ServiceCIDR)
	}
	if o.ServiceCIDR.Overlaps(o.PodCIDR) {
		return fmt.Errorf("service range %s overlaps the pod network %s", o.ServiceCIDR, o.PodCIDR)
	}
	if err := resolveNodeBinaries(ctx, &o, say); err != nil {
		return err
	}
	logDir, err := prepareStateDir(ctx, o, say)
	if err != nil {
		return err
	}
	// Every child inherits the marker, which is how Cleanup finds them after a crash.
	_ = os.Setenv(EnvMarker, o.StateDir)
	teardown := context.WithoutCancel(ctx)
	defer func() {
		// Whatever did not stop in time (a pod process that ignored SIGTERM, a hung
		// child) goes now, with the pod namespaces and links.
		killProcesses(o.StateDir)
		removeNetwork(teardown, o.Bridge)
		_ = os.Remove(ReadyFile(o.StateDir))
		say("stopped; logs kept in %s", logDir)
	}()

	if o.Registry != "" {
		reg, err := startRegistry(o)
		if err != nil {
			return err
		}
		defer reg.Close()
		say("OCI registry at %s (push with: make images REGISTRY=%s/weftmesh); its images run from their own root", reg.Addr, reg.Addr)
	}

	network := NewNetwork(o.Bridge, o.PodCIDR)
	if err := network.Up(ctx); err != nil {
		return err
	}
	gw := network.Gateway().String()
	if err := enableServiceRouting(ctx, o.Bridge, o.ServiceCIDR); err != nil {
		return err
	}
	say("pod network %s on bridge %s (host %s); services %s", o.PodCIDR, o.Bridge, gw, o.ServiceCIDR)

	t0 := time.Now()
	apiService := netip.AddrPortFrom(kubernetesServiceIP(o.ServiceCIDR), 443)
	env, err := startControlPlane(o, logDir, network.Gateway(), apiService.Addr())
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	kubeconfig, adminConfig, err := writeAdminKubeconfig(env, o.StateDir)
	if err != nil {
		return err
	}
	say("kube-apiserver at %s (pods: kubernetes.default.svc, %s), CRDs from %s installed", env.Config.Host, apiService, o.CRDDir)

	// --root-ca-file: the root-ca-cert-publisher writes the API server's CA into
	// kube-root-ca.crt in every namespace, the ca.crt of every pod's kube-api-access volume.
	kcm, err := startProcess("kube-controller-manager", logDir, filepath.Join(o.AssetsDir, "kube-controller-manager"), []string{
		"--kubeconfig=" + kubeconfig, "--controllers=*,-serviceaccount-token", "--leader-elect=false",
		"--root-ca-file=" + filepath.Join(env.ControlPlane.APIServer.CertDir, apiCAFile),
		"--secure-port=0", "--use-service-account-credentials=false", "--cluster-name=weft-dev", "-v=1",
	}, nil)
	if err != nil {
		return err
	}
	defer kcm.stop(10 * time.Second)

	cs, err := kubernetes.NewForConfig(adminConfig)
	if err != nil {
		return fmt.Errorf("building a client: %w", err)
	}
	webhookPort, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	cn, err := newClusterNet(o, network.Gateway())
	if err != nil {
		return err
	}
	// The Node exists before kube-proxy starts: kube-proxy waits 30 s for it (to learn its
	// addresses and topology labels) and reports unhealthy until it appears.
	agent := NewAgent(AgentOptions{NodeName: o.NodeName, StateDir: o.StateDir, DNS: &PodDNS{ServiceIP: o.ClusterDNS, Domain: o.ClusterDomain},
		APIService: apiService}, cs, network, o.Images, o.Log.WithName("node"))
	if err := agent.registerNode(ctx); err != nil {
		return err
	}
	services, err := startClusterServices(ctx, env, cs, cn, o.KubeProxyPath, o.CoreDNSPath, o.StateDir, logDir)
	if err != nil {
		return err
	}
	defer services.stop(teardown)
	sw := o.Manager
	if sw == nil {
		sw = &ManagerSwitch{}
	}
	sw.init(cs, webhookPort, func() (func(), error) { return superviseManager(ctx, o, logDir, kubeconfig, gw, webhookPort, say) })
	defer sw.stopManager()
	if o.NoManager {
		say("no manager on the host (--no-manager): install one with kubectl apply -f dist/install.yaml (docs/install.md)")
	} else {
		if err := sw.startManager(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // Ctrl-C while starting
			}
			return fmt.Errorf("%w (manager log: %s)", err, filepath.Join(logDir, "manager.log"))
		}
		say("manager running: xDS on %s:%d, sidecar-injection webhook on 127.0.0.1:%d", gw, o.XDSPort, webhookPort)
	}
	tWait := time.Now()
	if err := services.wait(ctx, time.Minute); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cluster services: %w", err)
	}
	say("kube-proxy (iptables) and CoreDNS at %s:%d serving: kube-dns %s, *.svc.%s (control plane up in %.1fs, %.1fs of it waiting for these two)",
		gw, cn.DNSPort, o.ClusterDNS, o.ClusterDomain, time.Since(t0).Seconds(), time.Since(tWait).Seconds())

	agentErr := make(chan error, 1)
	actx, stopAgent := context.WithCancel(ctx)
	go func() { agentErr <- agent.Run(actx) }()
	defer func() {
		stopAgent()
		// Wait until the agent has stopped its pods. An error it returns early is Run's
		// own (the select below returns it), so it is not reported a second time here.
		<-agentErr //nolint:errcheck // see above
	}()
	if err := os.WriteFile(ReadyFile(o.StateDir), []byte(kubeconfig+"\n"), 0o644); err != nil {
		return err
	}
	say("ready: node %s runs pods as local processes (logs under %s)", o.NodeName, filepath.Join(o.StateDir, "pods"))
	fmt.Fprintf(o.Out, "\n  export KUBECONFIG=%s\n  kubectl get mr,mfn,rp,pods -A\n\nPress Ctrl-C to stop and remove everything.\n\n", kubeconfig)
	select {
	case <-ctx.Done():
		say("stopping")
		return nil
	case err := <-agentErr:
		agentErr <- err
		return fmt.Errorf("node agent stopped: %w", err)
	}
}

// prepareStateDir checks the host, creates the state dir, removes what an earlier run with
// the same dir left behind, and returns the log directory.
func prepareStateDir(ctx context.Context, o Options, say func(string, ...any)) (string, error) {
	if err := Preflight(); err != nil {
		return "", err
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return "", fmt.Errorf("creating state dir %s: %w", o.StateDir, err)
	}
	// Processes first (a kube-proxy left running would put its rules back), then the rules.
	removed, err := Cleanup(ctx, o.StateDir, o.Bridge)
	if err != nil {
		return "", err
	}
	more, err := cleanupKubeProxyRules(ctx, o.KubeProxyPath)
	removed = append(removed, more...)
	if err != nil {
		return "", err
	}
	if len(removed) > 0 {
		say("removed what an earlier run left behind: %s", strings.Join(removed, ", "))
	}
	logDir := filepath.Join(o.StateDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return "", err
	}
	return logDir, nil
}

// writeAdminKubeconfig adds a system:masters user to the control plane, writes its
// kubeconfig into the state dir (Kubeconfig) and returns that file and the user's config.
func writeAdminKubeconfig(env *envtest.Environment, stateDir string) (string, *rest.Config, error) {
	admin, err := env.ControlPlane.AddUser(envtest.User{Name: "weft-dev-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", nil, fmt.Errorf("creating the admin user: %w", err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		return "", nil, fmt.Errorf("rendering the admin kubeconfig: %w", err)
	}
	kubeconfig := Kubeconfig(stateDir)
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return "", nil, fmt.Errorf("writing %s: %w", kubeconfig, err)
	}
	return kubeconfig, admin.Config(), nil
}

// startControlPlane starts etcd and kube-apiserver. The API server listens on the bridge
// address gw (reachable from the host and, through the kubernetes Service, from pods) with a
// certificate for gw, the Service's ClusterIP and its names (apiserver.go), and runs the
// ServiceAccount admission plugin envtest turns off, so pods get the kube-api-access volume
// in-cluster clients read their token, CA and namespace from.
func startControlPlane(o Options, logDir string, gw, apiServiceIP netip.Addr) (*envtest.Environment, error) {
	etcdLog, _ := os.Create(filepath.Join(logDir, "etcd.log"))
	apiLog, _ := os.Create(filepath.Join(logDir, "kube-apiserver.log"))
	env := &envtest.Environment{
		BinaryAssetsDirectory: o.AssetsDir, CRDDirectoryPaths: []string{o.CRDDir}, ErrorIfCRDPathMissing: true,
		ControlPlaneStartTimeout: 3 * time.Minute, ControlPlaneStopTimeout: 30 * time.Second,
	}
	env.ControlPlane.Etcd = &envtest.Etcd{DataDir: filepath.Join(o.StateDir, "etcd"), Out: etcdLog, Err: etcdLog}
	api := &envtest.APIServer{CertDir: filepath.Join(o.StateDir, "apiserver"), Out: apiLog, Err: apiLog}
	// Service ClusterIPs come from their own range, clear of the pod CIDR.
	api.Configure().Set("service-cluster-ip-range", o.ServiceCIDR.Masked().String())
	api.Configure().Disable("disable-admission-plugins")
	env.ControlPlane.APIServer = api
	for _, d := range []string{env.ControlPlane.Etcd.DataDir, api.CertDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	port, err := freePort(gw.String())
	if err != nil {
		return nil, fmt.Errorf("a port for kube-apiserver on %s: %w", gw, err)
	}
	api.SecureServing.Address, api.SecureServing.Port = gw.String(), strconv.Itoa(port)
	if api.SecureServing.CA, err = writeAPIServerCerts(api.CertDir, apiServerHosts(gw, apiServiceIP, o.ClusterDomain), time.Now()); err != nil {
		return nil, err
	}
	if _, err := env.Start(); err != nil {
		return nil, fmt.Errorf("starting etcd and kube-apiserver from %s (logs in %s): %w", o.AssetsDir, logDir, err)
	}
	return env, nil
}

// prepareCluster creates the weft-system namespace and the injection webhook configuration,
// pointed at the manager on loopback by URL (there is no Service routing on the host).
func prepareCluster(ctx context.Context, cs kubernetes.Interface, webhookPort int) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "weft-system"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace weft-system: %w", err)
	}
	mwc := webhookConfiguration(fmt.Sprintf("https://127.0.0.1:%d/inject-pod", webhookPort))
	api := cs.AdmissionregistrationV1().MutatingWebhookConfigurations()
	_, err := api.Create(ctx, mwc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// Kept from an earlier run: bring its webhooks up to date, keeping the CA the
		// manager published.
		var old *admissionregistrationv1.MutatingWebhookConfiguration
		if old, err = api.Get(ctx, mwc.Name, metav1.GetOptions{}); err == nil {
			for i := range mwc.Webhooks {
				if i < len(old.Webhooks) {
					mwc.Webhooks[i].ClientConfig.CABundle = old.Webhooks[i].ClientConfig.CABundle
				}
			}
			mwc.ResourceVersion = old.ResourceVersion
			_, err = api.Update(ctx, mwc, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("creating MutatingWebhookConfiguration weft-sidecar-injector: %w", err)
	}
	vwc := validatingConfiguration(fmt.Sprintf("https://127.0.0.1:%d%s", webhookPort, inject.MeshFunctionValidatePath))
	vapi := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	_, err = vapi.Create(ctx, vwc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		var old *admissionregistrationv1.ValidatingWebhookConfiguration
		if old, err = vapi.Get(ctx, vwc.Name, metav1.GetOptions{}); err == nil {
			for i := range vwc.Webhooks {
				if i < len(old.Webhooks) {
					vwc.Webhooks[i].ClientConfig.CABundle = old.Webhooks[i].ClientConfig.CABundle
				}
			}
			vwc.ResourceVersion = old.ResourceVersion
			_, err = vapi.Update(ctx, vwc, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("creating ValidatingWebhookConfiguration %s: %w", vwc.Name, err)
	}
	return nil
}

// validatingConfiguration is the MeshFunction validator's configuration of
// config/webhook/manifests.yaml (see there for the policy), pointed at url.
func validatingConfiguration(url string) *admissionregistrationv1.ValidatingWebhookConfiguration {
	ignore, none := admissionregistrationv1.Ignore, admissionregistrationv1.SideEffectClassNone
	return &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: inject.ValidatingWebhookConfigName},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name: "meshfunction.validate.weft.dev", AdmissionReviewVersions: []string{"v1"}, SideEffects: &none,
			FailurePolicy: &ignore, TimeoutSeconds: ptrTo(int32(5)),
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{meshv1alpha1.GroupVersion.Group}, APIVersions: []string{meshv1alpha1.GroupVersion.Version}, Resources: []string{"meshfunctions"}},
			}},
			MatchConditions: []admissionregistrationv1.MatchCondition{{Name: "has-traffic", Expression: "has(object.spec.traffic) && size(object.spec.traffic) > 0"}},
		}}}
}

// neverInjected are the namespaces the injection webhook is never called for, whatever
// their labels: the cluster's own and the manager's. With failurePolicy Fail, a manager
// that is down must not stop them from creating Pods, its own among them.
var neverInjected = []string{metav1.NamespaceSystem, metav1.NamespacePublic, corev1.NamespaceNodeLease, "weft-system"}

// webhookConfiguration is the injection webhook configuration of config/webhook/manifests.yaml
// (see there for the policy), pointed at url.
func webhookConfiguration(url string) *admissionregistrationv1.MutatingWebhookConfiguration {
	fail, none, never := admissionregistrationv1.Fail, admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.NeverReinvocationPolicy
	rules := []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
		Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}}
	hook := func(name string, nsSel, objSel *metav1.LabelSelector) admissionregistrationv1.MutatingWebhook {
		return admissionregistrationv1.MutatingWebhook{Name: name, AdmissionReviewVersions: []string{"v1"}, SideEffects: &none,
			FailurePolicy: &fail, ReinvocationPolicy: &never, TimeoutSeconds: ptrTo(int32(10)),
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url}, Rules: rules,
			NamespaceSelector: nsSel, ObjectSelector: objSel}
	}
	inject := func(op metav1.LabelSelectorOperator, v string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: "weft.dev/inject", Operator: op, Values: []string{v}}
	}
	excluded := metav1.LabelSelectorRequirement{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: neverInjected}
	sel := func(reqs ...metav1.LabelSelectorRequirement) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: reqs}
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: webhookConfigName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{
			hook("namespace.inject.weft.dev", sel(inject(metav1.LabelSelectorOpIn, "enabled"), excluded), sel(inject(metav1.LabelSelectorOpNotIn, "false"))),
			hook("object.inject.weft.dev", sel(inject(metav1.LabelSelectorOpNotIn, "enabled"), excluded), sel(inject(metav1.LabelSelectorOpIn, "true"))),
		}}
}

// superviseManager runs bin/manager and restarts it if it dies, so a crash shows in its log
// rather than silently leaving the mesh without a control plane.
func superviseManager(ctx context.Context, o Options, logDir, kubeconfig, gw string, webhookPort int, say func(string, ...any)) (func(), error) {
	path := filepath.Join(o.BinDir, "manager")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("manager binary %s is missing; build it with make build (go build -o bin/manager ./cmd/manager)", path)
	}
	probePort, err := freePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	args := []string{"--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:" + strconv.Itoa(probePort),
		"--webhook-host=127.0.0.1", "--webhook-port=" + strconv.Itoa(webhookPort), "--webhook-cert-hosts=127.0.0.1,localhost",
		"--webhook-cert-secret=weft-system/weft-webhook-cert", "--sidecar-image=ghcr.io/weftmesh/weft-sidecar:dev",
		"--sidecar-xds-address=" + gw + ":" + strconv.Itoa(o.XDSPort), "--sidecar-drain-seconds=2",
		// The embedded NATS server keeps its JetStream store with the rest of this run's state
		// and listens where pods can reach it.
		"--nats-store-dir=" + filepath.Join(o.StateDir, "nats"), "--nats-listen=" + gw + ":4222",
		"--nats-advertise=nats://" + gw + ":4222"}
	args = append(args, managerXDSArgs(path, gw, o.XDSPort)...)
	args = append(args, o.ManagerArgs...)
	env := []string{"KUBECONFIG=" + kubeconfig, "POD_NAMESPACE=weft-system"}
	mctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	cur, err := startProcess("manager", logDir, path, args, env)
	if err != nil {
		cancel()
		return nil, err
	}
	go func() {
		defer close(stopped)
		superviseLoop(mctx, clock.RealClock{}, newRestartBackoff(managerRestartInitial), cur.done,
			func() (<-chan struct{}, error) {
				np, err := startProcess("manager", logDir, path, args, env)
				if err != nil {
					say("starting the manager again failed: %v", err)
					return nil, err
				}
				cur = np
				return np.done, nil
			},
			func(delay time.Duration) {
				say("manager exited (%s); restarting in %s. Last log lines:\n%s", cur.cmd.ProcessState, delay, tail(cur.log, 600))
			},
			func() { cur.stop(15 * time.Second) })
	}()
	return func() { cancel(); <-stopped }, nil
}

// managerXDSArgs tells the manager where to serve xDS when it has such a flag: on the
// bridge address, the only host address pods can reach.
func managerXDSArgs(path, gw string, port int) []string {
	out, _ := execOutput(path, "-h")
	for _, name := range []string{"xds-bind-address", "xds-address", "xds-addr"} {
		if strings.Contains(out, "\n  -"+name+" ") || strings.Contains(out, "\n  -"+name+"\n") {
			return []string{"--" + name + "=" + gw + ":" + strconv.Itoa(port)}
		}
	}
	return nil
}

// waitWebhook waits until the manager has published its CA in the webhook configuration and
// answers on the webhook port, so that pods created from now on get their sidecar.
func waitWebhook(ctx context.Context, cs kubernetes.Interface, port int) error {
	deadline := time.Now().Add(2 * time.Minute)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: insecureTLS()}}
	for time.Now().Before(deadline) {
		mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhookConfigName, metav1.GetOptions{})
		if err == nil && len(mwc.Webhooks) > 0 && len(mwc.Webhooks[0].ClientConfig.CABundle) > 0 {
			if resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/inject-pod", port)); err == nil {
				resp.Body.Close()
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return errors.New("the manager did not serve the sidecar-injection webhook within 2 minutes")
}

// resolveNodeBinaries fills in the kube-proxy and CoreDNS paths the options leave empty,
// from k8sbin's cache, building them (minutes, once) when the cache lacks them.
func resolveNodeBinaries(ctx context.Context, o *Options, say func(string, ...any)) error {
	for _, p := range []*string{&o.KubeProxyPath, &o.CoreDNSPath} {
		if *p != "" {
			if _, err := os.Stat(*p); err != nil {
				return fmt.Errorf("node binary: %w", err)
			}
		}
	}
	if o.KubeProxyPath != "" && o.CoreDNSPath != "" {
		return nil
	}
	ko, err := k8sbin.OptionsFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	ko.Rebuild = false // WEFT_ENVTEST_REBUILD is for hack/envtest, not every start
	ko.Log = o.Out
	m, err := k8sbin.ResolveMesh(ctx, ko)
	if err != nil {
		return fmt.Errorf("finding or building kube-proxy and CoreDNS (go run ./hack/envtest -mesh does it ahead; --kube-proxy/--coredns take built ones): %w", err)
	}
	if o.KubeProxyPath == "" {
		o.KubeProxyPath = m.KubeProxy
	}
	if o.CoreDNSPath == "" {
		o.CoreDNSPath = m.CoreDNS
	}
	say("node binaries: %s, %s", o.KubeProxyPath, o.CoreDNSPath)
	return nil
}

// newClusterNet picks the loopback ports of kube-proxy and CoreDNS and gathers the
// addresses their configuration is made of.
func newClusterNet(o Options, gw netip.Addr) (clusterNet, error) {
	c := clusterNet{NodeName: o.NodeName, Gateway: gw, PodCIDR: o.PodCIDR.Masked(), ServiceCIDR: o.ServiceCIDR.Masked(),
		DNSIP: o.ClusterDNS, DNSPort: 53, Domain: o.ClusterDomain, Upstreams: o.DNSUpstreams}
	for _, p := range []*int{&c.ProxyHealthz, &c.ProxyMetrics, &c.DNSHealth, &c.DNSReady} {
		port, err := freePort("127.0.0.1")
		if err != nil {
			return c, err
		}
		*p = port
	}
	return c, nil
}
