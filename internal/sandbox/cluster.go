package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// The local mesh's Service plumbing is a node's: real kube-proxy programs the host's nat
// table for every Service, and real CoreDNS answers *.svc.<domain> behind the kube-dns
// Service. Both run as host processes (as kube-proxy does on a node; CoreDNS is usually a
// Deployment, but the node agent runs pods from image maps, and a host process needs no
// image or pod of its own). docs/local-mesh.md describes the addresses and the packet path.

// clusterNet is what the kube-proxy and CoreDNS command lines and the Corefile are made of.
type clusterNet struct {
	NodeName    string
	Gateway     netip.Addr   // the bridge's address: the host as pods see it, CoreDNS's address
	PodCIDR     netip.Prefix // kube-proxy's --cluster-cidr
	ServiceCIDR netip.Prefix
	DNSIP       netip.Addr // the kube-dns Service's ClusterIP
	DNSPort     int        // CoreDNS's port on Gateway (the Service's targetPort)
	Domain      string     // cluster.local
	// Upstreams are where CoreDNS forwards names outside the cluster domain (ip or
	// ip:port); none means such names get SERVFAIL (the local mesh is offline).
	Upstreams []string
	// Loopback ports of kube-proxy's healthz and metrics and CoreDNS's health and ready.
	ProxyHealthz, ProxyMetrics, DNSHealth, DNSReady int
}

// Names of what the sandbox creates for cluster DNS, as kubeadm names them.
const (
	dnsServiceName = "kube-dns"
	corednsRole    = "system:coredns"
	corednsUser    = "weft-dev:coredns"
	// kubeProxyUser gets the API server's bootstrap binding to ClusterRole
	// system:node-proxier (read Services, EndpointSlices, Nodes; write Events).
	kubeProxyUser = "system:kube-proxy"
	managedBy     = "weft-dev"
)

// Corefile renders CoreDNS's configuration, kubeadm's default Corefile made local: the
// server listens only on the bridge address (bind) — never on the host's other addresses
// or port 53 elsewhere; health and ready answer on loopback; the kubernetes plugin serves
// the cluster domain and reverse zones from the API server (kubeconfig); other names go to
// the upstreams if there are any.
func Corefile(c clusterNet, kubeconfig string) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".:%d {\n", c.DNSPort)
	fmt.Fprintf(&b, "    bind %s\n", c.Gateway)
	b.WriteString("    errors\n")
	fmt.Fprintf(&b, "    health 127.0.0.1:%d {\n        lameduck 2s\n    }\n", c.DNSHealth)
	fmt.Fprintf(&b, "    ready 127.0.0.1:%d\n", c.DNSReady)
	fmt.Fprintf(&b, "    kubernetes %s in-addr.arpa ip6.arpa {\n", strings.TrimSuffix(c.Domain, "."))
	fmt.Fprintf(&b, "        kubeconfig %s\n", kubeconfig)
	b.WriteString("        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }\n")
	if len(c.Upstreams) > 0 {
		fmt.Fprintf(&b, "    forward . %s {\n        max_concurrent 1000\n    }\n", strings.Join(c.Upstreams, " "))
		b.WriteString("    loop\n")
	}
	b.WriteString("    cache 30\n    loadbalance\n}\n")
	return b.String()
}

// kubeProxyArgs is kube-proxy's command line. Besides what the mode needs, it keeps
// kube-proxy's hands off host-wide settings the machine is shared for: conntrack sizes and
// timeouts are left as they are (0), and localhost NodePorts stay off (they would set
// net.ipv4.conf.all.route_localnet=1). NodePorts answer on the bridge address only.
func kubeProxyArgs(c clusterNet, kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--proxy-mode=iptables",
		"--hostname-override=" + c.NodeName,
		"--bind-address=" + c.Gateway.String(), // the node's primary IP, not a socket
		"--cluster-cidr=" + c.PodCIDR.String(),
		"--detect-local-mode=ClusterCIDR",
		"--nodeport-addresses=" + netip.PrefixFrom(c.Gateway, c.Gateway.BitLen()).String(),
		"--healthz-bind-address=127.0.0.1:" + strconv.Itoa(c.ProxyHealthz),
		"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(c.ProxyMetrics),
		"--iptables-localhost-nodeports=false",
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--iptables-min-sync-period=0", // program a change at once, as tests expect
		"--v=1",
	}
}

// coreDNSArgs is CoreDNS's command line.
func coreDNSArgs(corefile string) []string { return []string{"-conf", corefile} }

// dnsServiceIP is the kube-dns ClusterIP kubeadm picks: the service range's 10th address.
func dnsServiceIP(serviceCIDR netip.Prefix) netip.Addr {
	a := serviceCIDR.Masked().Addr()
	for range 10 {
		a = a.Next()
	}
	return a
}

// ParseDNSUpstreams turns `weft dev --dns-upstream` into CoreDNS forward targets: "" is
// none, "host" the nameservers of resolvConf (the host's /etc/resolv.conf, read, never
// written), otherwise a comma-separated list of ip or ip:port.
func ParseDNSUpstreams(s, resolvConf string) ([]string, error) {
	switch s {
	case "":
		return nil, nil
	case "host":
		b, err := os.ReadFile(resolvConf)
		if err != nil {
			return nil, err
		}
		ups := hostUpstreams(string(b))
		if len(ups) == 0 {
			return nil, fmt.Errorf("%s names no nameserver CoreDNS can forward to (loopback ones are skipped)", resolvConf)
		}
		return ups, nil
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.AddrPortFrom(a, 53).String())
			continue
		}
		ap, err := netip.ParseAddrPort(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither ip nor ip:port", f)
		}
		out = append(out, ap.String())
	}
	return out, nil
}

// hostUpstreams reads the nameservers of a resolv.conf, as ip:53 for the Corefile.
// Loopback ones (a stub resolver such as systemd-resolved's 127.0.0.53) are skipped: CoreDNS
// would forward to itself or to nothing reachable, as kubeadm's docs warn.
func hostUpstreams(resolvConf string) []string {
	var out []string
	for _, line := range strings.Split(resolvConf, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && !a.IsLoopback() {
				out = append(out, netip.AddrPortFrom(a, 53).String())
			}
		}
	}
	return out
}

// enableServiceRouting lets the host route pod traffic that kube-proxy DNATs back onto the
// bridge, scoped to the bridge so no host-wide setting changes:
//   - forwarding on the bridge only (a ClusterIP's endpoint on the same bridge is reached
//     by routing the DNATed packet back out of it);
//   - the bridge's own nf_call_iptables (what br_netfilter's global
//     net.bridge.bridge-nf-call-iptables does for every bridge): the endpoint's reply goes
//     straight to the caller over the bridge, and only with netfilter seeing bridged frames
//     does conntrack rewrite its source back to the ClusterIP;
//   - a route for the service range via the bridge, so host processes (the readiness check,
//     tests) reach ClusterIPs from the bridge address as pods do, whatever the default route.
func enableServiceRouting(ctx context.Context, bridge string, serviceCIDR netip.Prefix) error {
	if err := ip(ctx, "link", "set", "dev", bridge, "type", "bridge", "nf_call_iptables", "1"); err != nil {
		return fmt.Errorf("letting netfilter see bridged traffic (br_netfilter) on %s: %w", bridge, err)
	}
	fwd := filepath.Join("/proc/sys/net/ipv4/conf", bridge, "forwarding")
	if err := os.WriteFile(fwd, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enabling forwarding on %s (%s): %w", bridge, fwd, err)
	}
	if err := ip(ctx, "route", "replace", serviceCIDR.Masked().String(), "dev", bridge); err != nil {
		return fmt.Errorf("routing the service range: %w", err)
	}
	return nil
}

// clusterServices are the running kube-proxy and CoreDNS.
type clusterServices struct {
	c                  clusterNet
	kubeProxyPath      string
	kubeProxy, coreDNS *process
}

// startClusterServices creates the identities and objects kube-proxy and CoreDNS need and
// starts both. It does not wait for them (wait does), so they come up while the manager
// starts.
func startClusterServices(ctx context.Context, env *envtest.Environment, cs kubernetes.Interface, c clusterNet,
	kubeProxyPath, coreDNSPath, stateDir, logDir string) (*clusterServices, error) {
	if err := applyDNSObjects(ctx, cs, c); err != nil {
		return nil, err
	}
	kpKubeconfig, err := userKubeconfig(env, stateDir, "kube-proxy", envtest.User{Name: kubeProxyUser})
	if err != nil {
		return nil, err
	}
	dnsKubeconfig, err := userKubeconfig(env, stateDir, "coredns", envtest.User{Name: corednsUser})
	if err != nil {
		return nil, err
	}
	corefile := filepath.Join(stateDir, "Corefile")
	if err := os.WriteFile(corefile, []byte(Corefile(c, dnsKubeconfig)), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s: %w", corefile, err)
	}
	s := &clusterServices{c: c, kubeProxyPath: kubeProxyPath}
	if s.kubeProxy, err = startProcess("kube-proxy", logDir, kubeProxyPath, kubeProxyArgs(c, kpKubeconfig), nil); err != nil {
		return nil, err
	}
	if s.coreDNS, err = startProcess("coredns", logDir, coreDNSPath, coreDNSArgs(corefile), nil); err != nil {
		s.stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return s, nil
}

func userKubeconfig(env *envtest.Environment, stateDir, name string, u envtest.User) (string, error) {
	user, err := env.ControlPlane.AddUser(u, nil)
	if err != nil {
		return "", fmt.Errorf("creating API user %s for %s: %w", u.Name, name, err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("rendering the kubeconfig of %s: %w", name, err)
	}
	path := filepath.Join(stateDir, name+".kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}

// dnsObjects are CoreDNS's RBAC (kubeadm's ClusterRole system:coredns, bound to the user
// CoreDNS connects as) and the kube-dns Service at its fixed ClusterIP with an
// EndpointSlice naming CoreDNS's address on the bridge: the Service has no selector (there
// is no CoreDNS pod), so the slice is written here, as for any Service with manual endpoints.
func dnsObjects(c clusterNet) (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, *corev1.Service, *discoveryv1.EndpointSlice) {
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: corednsRole, Labels: map[string]string{"app.kubernetes.io/managed-by": managedBy}},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: corednsRole, Labels: role.Labels},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: corednsRole},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: corednsUser}}}
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	port := int32(c.DNSPort)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: dnsServiceName, Namespace: metav1.NamespaceSystem,
		Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "app.kubernetes.io/managed-by": managedBy}},
		Spec: corev1.ServiceSpec{ClusterIP: c.DNSIP.String(), Ports: []corev1.ServicePort{
			{Name: "dns", Protocol: udp, Port: 53, TargetPort: intstr.FromInt32(port)},
			{Name: "dns-tcp", Protocol: tcp, Port: 53, TargetPort: intstr.FromInt32(port)},
		}}}
	ready := true
	slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: dnsServiceName + "-" + managedBy, Namespace: metav1.NamespaceSystem,
		Labels: map[string]string{discoveryv1.LabelServiceName: dnsServiceName, discoveryv1.LabelManagedBy: managedBy}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{c.Gateway.String()}, NodeName: &c.NodeName,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready, Terminating: ptrTo(false)}}},
		Ports: []discoveryv1.EndpointPort{{Name: ptrTo("dns"), Protocol: &udp, Port: &port}, {Name: ptrTo("dns-tcp"), Protocol: &tcp, Port: &port}}}
	return role, binding, svc, slice
}

func applyDNSObjects(ctx context.Context, cs kubernetes.Interface, c clusterNet) error {
	role, binding, svc, slice := dnsObjects(c)
	for _, step := range []struct {
		what string
		do   func() error
	}{
		{"ClusterRole " + role.Name, func() error {
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRoleBinding " + binding.Name, func() error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
			return err
		}},
		{"Service kube-system/" + svc.Name, func() error {
			_, err := cs.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
			return err
		}},
		{"EndpointSlice kube-system/" + slice.Name, func() error {
			_, err := cs.DiscoveryV1().EndpointSlices(slice.Namespace).Create(ctx, slice, metav1.CreateOptions{})
			return err
		}},
	} {
		if err := step.do(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %s for cluster DNS: %w", step.what, err)
		}
	}
	return nil
}

// wait returns once kube-proxy reports healthy (its /healthz also wants the Node to exist,
// so the node agent registers it first), CoreDNS reports ready (its kubernetes
// plugin has synced), and a DNS query sent to the kube-dns ClusterIP — DNATed by
// kube-proxy's rules to CoreDNS — answers with that ClusterIP: the path a pod's lookup
// takes. It fails early, with the log's last lines, if either process exits.
func (s *clusterServices) wait(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	healthy := func(url string) error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s answered %s", url, resp.Status)
		}
		return nil
	}
	name := dnsServiceName + "." + metav1.NamespaceSystem + ".svc." + strings.TrimSuffix(s.c.Domain, ".")
	checks := []struct {
		what string
		ok   func() error
	}{
		{"kube-proxy healthz", func() error {
			return healthy(fmt.Sprintf("http://127.0.0.1:%d/healthz", s.c.ProxyHealthz))
		}},
		{"CoreDNS ready", func() error { return healthy(fmt.Sprintf("http://127.0.0.1:%d/ready", s.c.DNSReady)) }},
		{"a lookup of " + name + " via the kube-dns ClusterIP " + s.c.DNSIP.String(), func() error {
			return lookupVia(ctx, s.c.DNSIP, name, s.c.DNSIP)
		}},
	}
	exited := func() error {
		for _, p := range []*process{s.kubeProxy, s.coreDNS} {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited (%s); last log lines:\n%s", p.name, p.cmd.ProcessState, tail(p.log, 1500))
			default:
			}
		}
		return nil
	}
	for _, ch := range checks {
		var last error
		for {
			if last = ch.ok(); last == nil {
				break
			}
			if err := exited(); err != nil {
				return fmt.Errorf("waiting for %s: %w", ch.what, err)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s did not pass within %s: %w (logs: %s, %s)", ch.what, timeout, last, s.kubeProxy.log, s.coreDNS.log)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// lookupVia resolves name's A records at server:53 and wants want among them.
func lookupVia(ctx context.Context, server netip.Addr, name string, want netip.Addr) error {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, netip.AddrPortFrom(server, 53).String())
	}}
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	addrs, err := r.LookupNetIP(qctx, "ip4", name+".")
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if a.Unmap() == want {
			return nil
		}
	}
	return fmt.Errorf("%s resolved to %v, want %s", name, addrs, want)
}

// stop stops CoreDNS and kube-proxy, then removes kube-proxy's rules (kube-proxy leaves
// them in place when it exits, as on a node, for the next kube-proxy to take over).
func (s *clusterServices) stop(ctx context.Context) {
	s.coreDNS.stop(5 * time.Second)
	s.kubeProxy.stop(10 * time.Second)
	_, _ = cleanupKubeProxyRules(ctx, s.kubeProxyPath)
}

// cleanupKubeProxyRules removes what kube-proxy leaves in the host's tables when it exits
// or crashes: `kube-proxy --cleanup` removes every chain and rule of its own (iptables,
// ip6tables, and nftables/ipvs leftovers), and the kubelet's KUBE-FIREWALL chain, which
// kube-proxy creates too but leaves to the kubelet, is removed here (the node agent is this
// node's kubelet). It does nothing when no table holds a KUBE-* chain, and reports what it
// removed.
func cleanupKubeProxyRules(ctx context.Context, kubeProxy string) ([]string, error) {
	if len(kubeChains(ctx)) == 0 {
		return nil, nil
	}
	if kubeProxy == "" {
		return nil, errors.New("kube-proxy's iptables rules are present but no kube-proxy binary is known to remove them (kube-proxy --cleanup)")
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if b, err := exec.CommandContext(cctx, kubeProxy, "--cleanup", "--v=0").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("kube-proxy --cleanup: %w: %s", err, tailString(string(b), 600))
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		for _, parent := range []string{"INPUT", "OUTPUT"} {
			for i := 0; i < 10 && exec.CommandContext(cctx, ipt, "-w", "-t", "filter", "-D", parent, "-j", kubeletFirewallChain).Run() == nil; i++ {
			}
		}
		_ = exec.CommandContext(cctx, ipt, "-w", "-t", "filter", "-F", kubeletFirewallChain).Run()
		_ = exec.CommandContext(cctx, ipt, "-w", "-t", "filter", "-X", kubeletFirewallChain).Run()
	}
	removed := []string{"kube-proxy rules (kube-proxy --cleanup)"}
	if left := kubeChains(ctx); len(left) > 0 {
		removed = append(removed, "but not "+strings.Join(left, " "))
	}
	return removed, nil
}

// kubeletFirewallChain is the kubelet's chain kube-proxy's iptables mode also creates.
const kubeletFirewallChain = "KUBE-FIREWALL"

// kubeChains lists the KUBE-* chains in the host's IPv4 and IPv6 tables, as table/chain.
func kubeChains(ctx context.Context) []string {
	var out []string
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		b, err := exec.CommandContext(ctx, save).Output()
		if err != nil {
			continue
		}
		table := ""
		for _, line := range strings.Split(string(b), "\n") {
			if t, ok := strings.CutPrefix(line, "*"); ok {
				table = t
			}
			if c, ok := strings.CutPrefix(line, ":KUBE-"); ok {
				name, _, _ := strings.Cut(c, " ")
				out = append(out, strings.TrimSuffix(save, "-save")+"/"+table+"/KUBE-"+name)
			}
		}
	}
	return out
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
