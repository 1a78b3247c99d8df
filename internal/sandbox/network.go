package sandbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
)

// Names of everything the sandbox creates on the host carry this prefix, so a run after a
// crash can find and remove what the crashed run left.
const prefix = "weft"

// Network is the host side of the pod network: one bridge holding the gateway address, one
// network namespace per Pod joined to it by a veth pair. It drives iproute2 (`ip`), which
// keeps the sandbox free of netlink code and makes every step reproducible by hand.
type Network struct {
	Bridge  string       // e.g. weft0
	CIDR    netip.Prefix // e.g. 10.244.0.0/16; the first address is the bridge's
	mu      sync.Mutex
	used    map[netip.Addr]bool
	gateway netip.Addr
	last    netip.Addr // the address handed out last
}

// NewNetwork prepares (but does not create) a pod network.
func NewNetwork(bridge string, cidr netip.Prefix) *Network {
	cidr = cidr.Masked()
	return &Network{Bridge: bridge, CIDR: cidr, used: map[netip.Addr]bool{}, gateway: cidr.Addr().Next()}
}

// Gateway is the bridge's address: the host as Pods see it (the manager's xDS and webhook
// addresses, the Node's InternalIP).
func (n *Network) Gateway() netip.Addr { return n.gateway }

func ip(ctx context.Context, args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Up creates the bridge with the gateway address.
func (n *Network) Up(ctx context.Context) error {
	bits := n.CIDR.Bits()
	for _, args := range [][]string{
		{"link", "add", n.Bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", n.gateway, bits), "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
	} {
		if err := ip(ctx, args...); err != nil {
			return fmt.Errorf("creating pod bridge %s: %w", n.Bridge, err)
		}
	}
	return nil
}

// Down removes the bridge (the veth ends go with their namespaces).
func (n *Network) Down(ctx context.Context) error {
	return ip(ctx, "link", "del", n.Bridge)
}

// PodNet is one Pod's network: its namespace and address.
type PodNet struct {
	Netns string
	IP    netip.Addr
	veth  string
}

// names derives the netns and host-side veth names from the Pod's UID; interface names are
// limited to 15 bytes, so the veth is a short hash.
func names(uid string) (netns, veth string) {
	h := sha256.Sum256([]byte(uid))
	s := hex.EncodeToString(h[:])[:9] // "weftv"+9+"p" = 15 bytes, the limit
	return prefix + "-" + s, prefix + "v" + s
}

// Add creates a namespace for the Pod with UID uid, gives it the next free address and a
// default route through the bridge, and brings loopback up.
func (n *Network) Add(ctx context.Context, uid string) (*PodNet, error) {
	addr, err := n.allocate()
	if err != nil {
		return nil, err
	}
	netns, veth := names(uid)
	p := &PodNet{Netns: netns, IP: addr, veth: veth}
	peer := veth + "p"
	steps := [][]string{
		{"netns", "add", netns},
		{"link", "add", veth, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", netns},
		{"link", "set", veth, "master", n.Bridge},
		// Hairpin, as the kubelet's hairpin-veth mode: a pod calling a Service whose endpoint
		// is the pod itself has its packet DNATed back to its own address by kube-proxy's
		// rules while the bridge handles it (br_netfilter), and the bridge must then send
		// the frame out of the port it came in on.
		{"link", "set", veth, "type", "bridge_slave", "hairpin", "on"},
		{"link", "set", veth, "up"},
		{"-n", netns, "link", "set", "lo", "up"},
		{"-n", netns, "link", "set", peer, "name", "eth0"},
		{"-n", netns, "addr", "add", fmt.Sprintf("%s/%d", addr, n.CIDR.Bits()), "dev", "eth0"},
		{"-n", netns, "link", "set", "eth0", "up"},
		{"-n", netns, "route", "add", "default", "via", n.gateway.String()},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			n.Remove(context.WithoutCancel(ctx), p)
			return nil, fmt.Errorf("creating the network of pod %s: %w", uid, err)
		}
	}
	return p, nil
}

// Remove deletes the Pod's namespace and veth and frees its address. Errors are ignored:
// it runs during teardown, where the thing may already be gone.
func (n *Network) Remove(ctx context.Context, p *PodNet) {
	_ = ip(ctx, "link", "del", p.veth)
	_ = ip(ctx, "netns", "del", p.Netns)
	_ = removeNetnsEtc(p.Netns)
	n.release(p.IP)
}

// release frees an address.
func (n *Network) release(a netip.Addr) {
	n.mu.Lock()
	delete(n.used, a)
	n.mu.Unlock()
}

func (n *Network) allocate() (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	// Round robin from the last address handed out, like CNI's host-local IPAM: an address
	// freed a moment ago is not reused at once, so a caller still holding a connection (or an
	// ARP entry) for a deleted pod cannot reach the wrong pod, or a MAC that is gone.
	start := n.last
	if !start.IsValid() {
		start = n.gateway
	}
	usable := func(a netip.Addr) bool {
		return a != n.gateway && !n.used[a] && a.Next().IsValid() && n.CIDR.Contains(a.Next()) // skip broadcast
	}
	for _, span := range [][2]netip.Addr{{start.Next(), netip.Addr{}}, {n.gateway.Next(), start.Next()}} {
		for a := span[0]; n.CIDR.Contains(a) && a != span[1]; a = a.Next() {
			if usable(a) {
				n.used[a], n.last = true, a
				return a, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("pod network %s has no free address; delete some pods", n.CIDR)
}
