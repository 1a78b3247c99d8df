package contract

import (
	"slices"
	"strconv"
	"strings"
)

// LabelInboundTLS extends LabelInboundTLSPort to every port a pod's capture brings to its
// sidecar (docs/mtls.md "TCP"): the sidecar terminates mesh TLS on each of them, and the
// control plane marks the pod's endpoints on those ports tlsMode: weft. The injector sets
// it; its value is an InboundTLSPorts in a label value's alphabet (no commas, at most 63
// characters):
//
//	all                  every port but the sidecar's own (15000-15021, 15090)
//	all.except.9000.9001 the same, less the pod's excludeInboundPorts
//	8080.6379            exactly these (an includeInboundPorts list)
//
// A pod without it (injected before it existed, or whose exclusions do not fit in 63
// characters) has only its LabelInboundTLSPort marked, as before.
const LabelInboundTLS = "weft.dev/inbound-tls"

// maxLabelValue is the longest label value Kubernetes accepts.
const maxLabelValue = 63

// sidecarInboundPorts are never captured inbound (internal/capture's
// AlwaysExcludedInboundPorts): the sidecar's own ports.
func sidecarInboundPort(p uint16) bool { return p >= 15000 && p <= 15021 || p == 15090 }

// InboundTLSPorts is the set of ports LabelInboundTLS names.
type InboundTLSPorts struct {
	// All: every port but the sidecar's own and Except; else exactly Ports.
	All    bool
	Except []uint16
	Ports  []uint16
}

// Has reports whether the sidecar terminates mesh TLS on port.
func (p InboundTLSPorts) Has(port uint16) bool {
	if sidecarInboundPort(port) {
		return false
	}
	if p.All {
		return !slices.Contains(p.Except, port)
	}
	return slices.Contains(p.Ports, port)
}

// Encode is p as LabelInboundTLS's value; false when it does not fit in a label value.
func (p InboundTLSPorts) Encode() (string, bool) {
	var parts []string
	list := p.Ports
	if p.All {
		parts, list = []string{"all"}, p.Except
		if len(list) > 0 {
			parts = append(parts, "except")
		}
	}
	list = slices.Clone(list)
	slices.Sort(list)
	for _, n := range slices.Compact(list) {
		parts = append(parts, strconv.Itoa(int(n)))
	}
	v := strings.Join(parts, ".")
	return v, v != "" && len(v) <= maxLabelValue
}

// ParseInboundTLSPorts reads LabelInboundTLS's value; false when it is not one.
func ParseInboundTLSPorts(v string) (InboundTLSPorts, bool) {
	parts := strings.Split(v, ".")
	var p InboundTLSPorts
	list := &p.Ports
	if parts[0] == "all" {
		p.All, list, parts = true, &p.Except, parts[1:]
		if len(parts) > 0 {
			if parts[0] != "except" || len(parts) == 1 {
				return InboundTLSPorts{}, false
			}
			parts = parts[1:]
		}
	}
	for _, s := range parts {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return InboundTLSPorts{}, false
		}
		*list = append(*list, uint16(n))
	}
	return p, p.All || len(p.Ports) > 0
}
