package sandbox

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testClusterNet() clusterNet {
	return clusterNet{NodeName: "weft-dev", Gateway: netip.MustParseAddr("10.244.0.1"),
		PodCIDR: netip.MustParsePrefix("10.244.0.0/16"), ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16"),
		DNSIP: netip.MustParseAddr("10.96.0.10"), DNSPort: 53, Domain: "cluster.local",
		ProxyHealthz: 40001, ProxyMetrics: 40002, DNSHealth: 40003, DNSReady: 40004}
}

func TestCorefile(t *testing.T) {
	c := testClusterNet()
	want := `.:53 {
    bind 10.244.0.1
    errors
    health 127.0.0.1:40003 {
        lameduck 2s
    }
    ready 127.0.0.1:40004
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig /s/coredns.kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loadbalance
}
`
	if got := Corefile(c, "/s/coredns.kubeconfig"); got != want {
		t.Errorf("Corefile without upstreams =\n%s\nwant\n%s", got, want)
	}
	// With upstreams: forward (after kubernetes, whose fallthrough covers only reverse
	// zones), and loop detection, which only makes sense when forwarding.
	c.Upstreams = []string{"192.0.2.53:53", "[2001:db8::53]:53"}
	c.Domain = "corp.example."
	got := Corefile(c, "/k")
	for _, s := range []string{
		"    kubernetes corp.example in-addr.arpa ip6.arpa {\n",
		"    forward . 192.0.2.53:53 [2001:db8::53]:53 {\n        max_concurrent 1000\n    }\n    loop\n    cache 30\n",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("Corefile with upstreams lacks %q:\n%s", s, got)
		}
	}
	// Every directive used is compiled into the CoreDNS the sandbox builds.
	for _, line := range strings.Split(got, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "}" || strings.HasPrefix(f[0], ".:") {
			continue
		}
		switch f[0] {
		case "lameduck", "kubeconfig", "pods", "fallthrough", "ttl", "max_concurrent":
			continue // a plugin's own option
		}
		if !slices.Contains(corednsPluginsUsed, f[0]) {
			t.Errorf("Corefile uses %q, which the CoreDNS build does not include", f[0])
		}
	}
}

// corednsPluginsUsed mirrors k8sbin.CoreDNSPlugins (not imported here to keep the test
// about the Corefile); TestCorefile checks the Corefile uses nothing else.
var corednsPluginsUsed = []string{"bind", "cache", "errors", "forward", "health", "kubernetes", "loadbalance", "log", "loop", "ready", "reload"}

func TestKubeProxyArgs(t *testing.T) {
	got := kubeProxyArgs(testClusterNet(), "/s/kube-proxy.kubeconfig")
	want := []string{
		"--kubeconfig=/s/kube-proxy.kubeconfig",
		"--proxy-mode=iptables",
		"--hostname-override=weft-dev",
		"--bind-address=10.244.0.1",
		"--cluster-cidr=10.244.0.0/16",
		"--detect-local-mode=ClusterCIDR",
		"--nodeport-addresses=10.244.0.1/32",
		"--healthz-bind-address=127.0.0.1:40001",
		"--metrics-bind-address=127.0.0.1:40002",
		"--iptables-localhost-nodeports=false",
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--iptables-min-sync-period=0",
		"--v=1",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("kubeProxyArgs =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Nothing listens beyond loopback, and no flag is given twice.
	seen := map[string]bool{}
	for _, a := range got {
		name, val, _ := strings.Cut(a, "=")
		if seen[name] {
			t.Errorf("%s given twice", name)
		}
		seen[name] = true
		if strings.HasSuffix(name, "-bind-address") && name != "--bind-address" && !strings.HasPrefix(val, "127.0.0.1:") {
			t.Errorf("%s listens on %s, not loopback", name, val)
		}
	}
	if got := coreDNSArgs("/s/Corefile"); !reflect.DeepEqual(got, []string{"-conf", "/s/Corefile"}) {
		t.Errorf("coreDNSArgs = %q", got)
	}
}

func TestDNSServiceIP(t *testing.T) {
	for cidr, want := range map[string]string{"10.96.0.0/16": "10.96.0.10", "10.100.7.0/24": "10.100.7.10", "10.96.3.4/12": "10.96.0.10"} {
		if got := dnsServiceIP(netip.MustParsePrefix(cidr)); got.String() != want {
			t.Errorf("dnsServiceIP(%s) = %s, want %s", cidr, got, want)
		}
	}
}

func TestParseDNSUpstreams(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver bogus\nnameserver 2001:db8::1\noptions edns0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   string
		want []string
		err  bool
	}{
		{"", nil, false},
		{"host", []string{"192.0.2.1:53", "[2001:db8::1]:53"}, false}, // loopback stub skipped
		{"192.0.2.9, 192.0.2.10:5353", []string{"192.0.2.9:53", "192.0.2.10:5353"}, false},
		{"dns.example.com", nil, true},
		{"192.0.2.9:port", nil, true},
	} {
		got, err := ParseDNSUpstreams(tc.in, rc)
		if (err != nil) != tc.err || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseDNSUpstreams(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	only := filepath.Join(dir, "stub.conf")
	if err := os.WriteFile(only, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseDNSUpstreams("host", only); err == nil {
		t.Error("a resolv.conf with only a loopback stub gave upstreams")
	}
	if _, err := ParseDNSUpstreams("host", filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing resolv.conf was accepted")
	}
}

// The kube-dns Service and its slice must line up the way kube-proxy matches them: slice
// labelled with the Service's name, same port names and protocols, the Service's
// targetPort being the slice's port; CoreDNS's address is the bridge's.
func TestDNSObjects(t *testing.T) {
	c := testClusterNet()
	c.DNSPort = 1053
	role, binding, svc, slice := dnsObjects(c)
	if svc.Namespace != metav1.NamespaceSystem || svc.Name != "kube-dns" || svc.Spec.ClusterIP != "10.96.0.10" || svc.Spec.Selector != nil {
		t.Errorf("Service = %+v", svc)
	}
	if slice.Namespace != svc.Namespace || slice.Labels[discoveryv1.LabelServiceName] != svc.Name || slice.Labels[discoveryv1.LabelManagedBy] == "endpointslice-controller.k8s.io" {
		t.Errorf("slice metadata = %+v", slice.ObjectMeta)
	}
	if len(slice.Endpoints) != 1 || !reflect.DeepEqual(slice.Endpoints[0].Addresses, []string{"10.244.0.1"}) || !*slice.Endpoints[0].Conditions.Ready {
		t.Errorf("slice endpoints = %+v", slice.Endpoints)
	}
	if len(svc.Spec.Ports) != 2 || len(slice.Ports) != 2 {
		t.Fatalf("ports: service %+v, slice %+v", svc.Spec.Ports, slice.Ports)
	}
	for i, p := range svc.Spec.Ports {
		sp := slice.Ports[i]
		if p.Port != 53 || *sp.Name != p.Name || *sp.Protocol != p.Protocol || *sp.Port != 1053 || p.TargetPort.IntValue() != 1053 {
			t.Errorf("service port %+v does not match slice port %s/%s/%d", p, *sp.Name, *sp.Protocol, *sp.Port)
		}
	}
	if svc.Spec.Ports[0].Protocol != corev1.ProtocolUDP || svc.Spec.Ports[1].Protocol != corev1.ProtocolTCP {
		t.Errorf("protocols = %s, %s; want UDP and TCP", svc.Spec.Ports[0].Protocol, svc.Spec.Ports[1].Protocol)
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != corednsUser {
		t.Errorf("binding = %+v", binding)
	}
	var readsSlices, writes bool
	for _, r := range role.Rules {
		readsSlices = readsSlices || slicesContain(r.Resources, "endpointslices") && slicesContain(r.APIGroups, "discovery.k8s.io")
		for _, v := range r.Verbs {
			writes = writes || v != "list" && v != "watch"
		}
	}
	if !readsSlices || writes {
		t.Errorf("CoreDNS's role: endpointslices readable %v, writes anything %v; want true, false", readsSlices, writes)
	}
}

func slicesContain(list []string, s string) bool { return slices.Contains(list, s) }
