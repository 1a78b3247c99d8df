// Package capture turns a pod's traffic-capture settings into the netfilter rules that send
// its TCP through the Weft sidecar, as istio-iptables does for Istio. It takes a typed Config
// (from pod annotations at admission, or from cmd/weft-init's flags, which the webhook renders
// from the same Config) and produces the nat-table script iptables-restore applies in the
// pod's network namespace: outbound TCP to 127.0.0.1:15001, inbound TCP to :15006, the
// sidecar's own traffic (UID/GID 1337) and the excluded ports and ranges left alone.
// docs/capture.md explains each rule. The package is pure: no exec, no files.
package capture

import (
	"net/netip"

	"github.com/weftmesh/weft/contract"
)

// Chains Weft adds to the nat table (Istio's ISTIO_* chains, renamed).
const (
	// ChainInbound decides which inbound TCP ports are captured (jumped to from PREROUTING).
	ChainInbound = "WEFT_INBOUND"
	// ChainInRedirect redirects to the sidecar's inbound capture port.
	ChainInRedirect = "WEFT_IN_REDIRECT"
	// ChainOutput decides which outbound TCP is captured (jumped to from OUTPUT).
	ChainOutput = "WEFT_OUTPUT"
	// ChainRedirect redirects to the sidecar's outbound capture port.
	ChainRedirect = "WEFT_REDIRECT"
)

// MaxListEntries bounds every list setting (CIDRs, ports, UIDs): each entry is one rule that
// every new connection walks, and a pod must not be able to install thousands.
const MaxListEntries = 64

// AlwaysExcludedInboundPorts are never captured inbound, whatever the annotations say: the
// sidecar's own ports 15000-15021 (admin 15000, the capture ports 15001 and 15006, metrics
// and readiness 15020 that the kubelet probes) and 15090, the port Istio's Prometheus
// scrapes, kept free for the same use. Capturing them would send the kubelet's probes and
// direct calls to the inbound listener instead of the port they name.
var AlwaysExcludedInboundPorts = []PortRange{{First: 15000, Last: 15021}, {First: 15090, Last: 15090}}

// PortRange is an inclusive range of TCP ports; a single port has First == Last.
type PortRange struct{ First, Last uint16 }

// Port is the range of one port.
func Port(p uint16) PortRange { return PortRange{First: p, Last: p} }

// match is the iptables --dport value: "8080" or "15000:15021".
func (r PortRange) match() string {
	if r.First == r.Last {
		return itoa(uint64(r.First))
	}
	return itoa(uint64(r.First)) + ":" + itoa(uint64(r.Last))
}

// IPRanges is a set of CIDRs, or every address ("*").
type IPRanges struct {
	All      bool
	Prefixes []netip.Prefix
}

// Ports is a set of TCP ports, or every port ("*").
type Ports struct {
	All  bool
	List []uint16
}

// Config is everything the rules depend on.
type Config struct {
	// OutboundPort is where captured outbound TCP is redirected (on the loopback).
	OutboundPort uint16
	// InboundPort is where captured inbound TCP is redirected.
	InboundPort uint16
	// ProxyUIDs and ProxyGIDs are the sidecar's users and groups; their traffic is never
	// captured outbound (it would loop), and their loopback calls to the pod's own address
	// go through inbound capture.
	ProxyUIDs, ProxyGIDs []uint32
	// IncludeOutboundIPRanges are the destinations captured outbound; empty: none.
	IncludeOutboundIPRanges IPRanges
	// ExcludeOutboundIPRanges are destinations never captured outbound.
	ExcludeOutboundIPRanges []netip.Prefix
	// ExcludeOutboundPorts are destination ports never captured outbound.
	ExcludeOutboundPorts []uint16
	// IncludeInboundPorts are the local ports captured inbound; empty: none.
	IncludeInboundPorts Ports
	// ExcludeInboundPorts are never captured inbound, on top of AlwaysExcludedInboundPorts.
	ExcludeInboundPorts []uint16
}

// Default is Istio's default capture: every outbound destination and every inbound port, the
// sidecar exempt by UID and GID 1337.
func Default() Config {
	return Config{
		OutboundPort:            contract.OutboundPort,
		InboundPort:             contract.InboundPort,
		ProxyUIDs:               []uint32{contract.ProxyUID},
		ProxyGIDs:               []uint32{contract.ProxyGID},
		IncludeOutboundIPRanges: IPRanges{All: true},
		IncludeInboundPorts:     Ports{All: true},
	}
}
