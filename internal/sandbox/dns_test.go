package sandbox

import (
	"context"
	"github.com/weftmesh/weft/testenv"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestResolvConf(t *testing.T) {
	dns := PodDNS{ServiceIP: netip.MustParseAddr("10.96.0.10"), Domain: "cluster.local"}
	pod := func(policy corev1.DNSPolicy, hostNet bool, cfg *corev1.PodDNSConfig) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"},
			Spec: corev1.PodSpec{DNSPolicy: policy, HostNetwork: hostNet, DNSConfig: cfg}}
	}
	clusterFirst := "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	many := make([]string, 30)
	for i := range many {
		many[i] = strings.Repeat("d", 60) + strconv.Itoa(i) + ".example"
	}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want string
		err  string
	}{
		{"unset policy is ClusterFirst", pod("", false, nil), clusterFirst, ""},
		{"ClusterFirst", pod(corev1.DNSClusterFirst, false, nil), clusterFirst, ""},
		{"ClusterFirst on the host network keeps the host's", pod(corev1.DNSClusterFirst, true, nil), "", ""},
		{"ClusterFirstWithHostNet", pod(corev1.DNSClusterFirstWithHostNet, true, nil), clusterFirst, ""},
		{"Default keeps the host's", pod(corev1.DNSDefault, false, nil), "", ""},
		{"dnsConfig merges", pod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{
			Nameservers: []string{"192.0.2.53", "10.96.0.10"},
			Searches:    []string{"corp.example", "svc.cluster.local"},
			Options:     []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptrTo("2")}, {Name: "edns0"}},
		}), "nameserver 10.96.0.10\nnameserver 192.0.2.53\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2 edns0\n", ""},
		{"None uses dnsConfig alone", pod(corev1.DNSNone, false, &corev1.PodDNSConfig{
			Nameservers: []string{"192.0.2.53"}, Options: []corev1.PodDNSConfigOption{{Name: "timeout", Value: ptrTo("1")}},
		}), "nameserver 192.0.2.53\noptions timeout:1\n", ""},
		{"None without nameservers", pod(corev1.DNSNone, false, nil), "", "needs dnsConfig.nameservers"},
		{"too many nameservers", pod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{
			Nameservers: []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}}), "", "at most 3"},
		{"a nameserver that is not an address", pod(corev1.DNSNone, false, &corev1.PodDNSConfig{
			Nameservers: []string{"dns.example"}}), "", "not an IP"},
		{"a search domain that smuggles a line", pod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{
			Searches: []string{"a.example\nnameserver 192.0.2.66"}}), "", "white space"},
		{"an option that smuggles a line", pod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptrTo("1\nnameserver 192.0.2.66")}}}), "", "white space"},
		{"too many search domains", pod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{Searches: many}), "", "at most 32"},
		{"unknown policy", pod("Sometimes", false, nil), "", "unknown dnsPolicy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolvConf(tc.pod, dns)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q (got %q)", err, tc.err, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ResolvConf = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := ResolvConf(pod("", false, nil), PodDNS{}); err == nil {
		t.Error("ClusterFirst without a cluster DNS address was accepted")
	}
}

// `ip netns exec NAME` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf in a
// mount namespace of its own: a command run that way reads the pod's file, the host's
// stays as it was. Needs root and iproute2 (skipped otherwise).
func TestNetnsResolvConfIsThePodsAndNotTheHosts(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for ip netns")
	}
	netns := prefix + "-unit" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", ""))[:6]
	if err := ip(t.Context(), "netns", "add", netns); err != nil {
		testenv.Missing(t, err.Error())
	}
	t.Cleanup(func() {
		_ = ip(context.Background(), "netns", "del", netns) // t.Context() is done by now
		_ = removeNetnsEtc(netns)
	})
	host, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	content := "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if err := writeNetnsResolvConf(netns, content); err != nil {
		t.Fatal(err)
	}
	out, err := execOutput("ip", "netns", "exec", netns, "cat", "/etc/resolv.conf")
	if err != nil || out != content {
		t.Errorf("inside the netns /etc/resolv.conf = %q (%v), want %q", out, err, content)
	}
	if now, _ := os.ReadFile("/etc/resolv.conf"); string(now) != string(host) {
		t.Errorf("the host's /etc/resolv.conf changed to %q", now)
	}
	if err := removeNetnsEtc(netns); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsEtc, netns)); !os.IsNotExist(err) {
		t.Errorf("%s/%s still there: %v", netnsEtc, netns, err)
	}
	// Only the sandbox's own directories can be removed this way.
	for _, bad := range []string{"other", prefix + "-../x", ""} {
		if err := removeNetnsEtc(bad); err == nil {
			t.Errorf("removeNetnsEtc(%q) was allowed", bad)
		}
	}
	if err := writeNetnsResolvConf(netns, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsEtc, netns)); !os.IsNotExist(err) {
		t.Error("an empty resolv.conf (the host's) created a per-netns file")
	}
}
