package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// PodDNS is what the node agent needs to give a Pod the kubelet's resolv.conf: the cluster
// DNS Service's ClusterIP and the cluster domain.
type PodDNS struct {
	ServiceIP netip.Addr
	Domain    string // cluster.local
}

// The kubelet's limits on a Pod's resolv.conf (pkg/kubelet/network/dns and the API's
// validation): glibc reads at most 3 nameservers, and at most 32 search domains of 2048
// characters in all.
const (
	maxNameservers   = 3
	maxSearches      = 32
	maxSearchChars   = 2048
	clusterFirstDots = "5"
)

// netnsEtc is where `ip netns exec NAME` finds the files it bind-mounts over /etc in the
// private mount namespace it creates for each command (ip-netns(8)): /etc/netns/NAME/X
// shows as /etc/X to the command and its children. Every container, probe and hook of a
// Pod runs through `ip netns exec`, so a resolv.conf here is the Pod's resolv.conf, while
// the host's /etc/resolv.conf is neither changed nor seen by the Pod.
const netnsEtc = "/etc/netns"

// ResolvConf renders the resolv.conf the kubelet gives pod, or "" when the Pod keeps the
// node's (dnsPolicy Default, or ClusterFirst with hostNetwork), as the kubelet decides:
//   - ClusterFirst (the default): nameserver the cluster DNS Service, search
//     <ns>.svc.<domain> svc.<domain> <domain>, options ndots:5;
//   - None: only what spec.dnsConfig says;
//   - either way spec.dnsConfig's nameservers and searches are appended (duplicates
//     dropped) and its options override same-named ones.
//
// The node's own search domains are not appended (the kubelet appends them): the local
// mesh's host has none worth leaking pod queries to.
func ResolvConf(pod *corev1.Pod, dns PodDNS) (string, error) {
	var servers, search []string
	var opts []corev1.PodDNSConfigOption
	switch pod.Spec.DNSPolicy {
	case corev1.DNSDefault:
		return "", nil
	case corev1.DNSClusterFirst, "":
		if pod.Spec.HostNetwork {
			return "", nil
		}
		fallthrough
	case corev1.DNSClusterFirstWithHostNet:
		if !dns.ServiceIP.IsValid() {
			return "", errors.New("the node has no cluster DNS")
		}
		d := strings.TrimSuffix(dns.Domain, ".")
		servers = []string{dns.ServiceIP.String()}
		search = []string{pod.Namespace + ".svc." + d, "svc." + d, d}
		opts = []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptrTo(clusterFirstDots)}}
	case corev1.DNSNone:
		if pod.Spec.DNSConfig == nil || len(pod.Spec.DNSConfig.Nameservers) == 0 {
			return "", errors.New("dnsPolicy None needs dnsConfig.nameservers")
		}
	default:
		return "", fmt.Errorf("unknown dnsPolicy %q", pod.Spec.DNSPolicy)
	}
	if c := pod.Spec.DNSConfig; c != nil {
		servers = appendNew(servers, c.Nameservers...)
		search = appendNew(search, c.Searches...)
		for _, o := range c.Options {
			replaced := false
			for i := range opts {
				if opts[i].Name == o.Name {
					opts[i], replaced = o, true
				}
			}
			if !replaced {
				opts = append(opts, o)
			}
		}
	}
	if len(servers) > maxNameservers {
		return "", fmt.Errorf("%d nameservers; at most %d are allowed", len(servers), maxNameservers)
	}
	if n := len(strings.Join(search, " ")); len(search) > maxSearches || n > maxSearchChars {
		return "", fmt.Errorf("%d search domains of %d characters; at most %d of %d are allowed", len(search), n, maxSearches, maxSearchChars)
	}
	var b strings.Builder
	for _, s := range servers {
		if _, err := netip.ParseAddr(s); err != nil {
			return "", fmt.Errorf("nameserver %q is not an IP address", s)
		}
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(search) > 0 {
		for _, s := range search {
			if strings.ContainsAny(s, " \t\n") {
				return "", fmt.Errorf("search domain %q has white space", s)
			}
		}
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	if len(opts) > 0 {
		words := make([]string, 0, len(opts))
		for _, o := range opts {
			w := o.Name
			if o.Value != nil {
				w += ":" + *o.Value
			}
			if w == "" || strings.ContainsAny(w, " \t\n") {
				return "", fmt.Errorf("resolver option %q is empty or has white space", w)
			}
			words = append(words, w)
		}
		fmt.Fprintf(&b, "options %s\n", strings.Join(words, " "))
	}
	return b.String(), nil
}

func appendNew(list []string, more ...string) []string {
	for _, m := range more {
		dup := false
		for _, l := range list {
			dup = dup || l == m
		}
		if !dup {
			list = append(list, m)
		}
	}
	return list
}

// writeNetnsResolvConf makes content the resolv.conf of every command run with `ip netns
// exec netns`; an empty content leaves the host's in view.
func writeNetnsResolvConf(netns, content string) error {
	if content == "" {
		return nil
	}
	dir := filepath.Join(netnsEtc, netns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing the resolv.conf of netns %s: %w", netns, err)
	}
	return nil
}

// removeNetnsEtc removes the per-namespace /etc files of netns.
func removeNetnsEtc(netns string) error {
	if !strings.HasPrefix(netns, prefix+"-") || strings.ContainsAny(netns, "/.") {
		return fmt.Errorf("refusing to remove %s/%s: not a sandbox netns", netnsEtc, netns)
	}
	if err := os.RemoveAll(filepath.Join(netnsEtc, netns)); err != nil {
		return err
	}
	_ = os.Remove(netnsEtc) // only if empty: the host may keep its own netns files there
	return nil
}
