package capture

import (
	"strings"

	"github.com/weftmesh/weft/contract"
)

// Family is an IP version: the rules of each go to its own tool (iptables-restore,
// ip6tables-restore).
type Family int

// The families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// loopback is the address the sidecar's outbound listener and the app's localhost calls use;
// it is never captured.
func (f Family) loopback() string {
	if f == IPv6 {
		return "::1/128"
	}
	return "127.0.0.1/32"
}

func (f Family) passthrough() string {
	if f == IPv6 {
		return contract.InboundPassthroughSourceIPv6 + "/128"
	}
	return contract.InboundPassthroughSourceIPv4 + "/32"
}

// Jumps are the rules Weft adds to the built-in chains; every other rule is in Weft's own
// chains. Only TCP enters them: UDP (DNS included) and every other protocol are untouched.
func jumps(c Config) []string {
	j := []string{"-A OUTPUT -p tcp -j " + ChainOutput}
	if c.IncludeInboundPorts.All || len(c.IncludeInboundPorts.List) > 0 {
		j = append([]string{"-A PREROUTING -p tcp -j " + ChainInbound}, j...)
	}
	return j
}

// Rules returns the nat-table rules for family f in iptables-restore syntax, in the order
// they are evaluated (Istio's order, tools/istio-iptables/pkg/capture/run.go): chain
// declarations, Weft's chains, then the jumps from PREROUTING and OUTPUT.
func Rules(c Config, f Family) []string {
	r := []string{
		":" + ChainInbound + " - [0:0]",
		":" + ChainInRedirect + " - [0:0]",
		":" + ChainOutput + " - [0:0]",
		":" + ChainRedirect + " - [0:0]",
	}
	add := func(chain string, args ...string) { r = append(r, "-A "+chain+" "+strings.Join(args, " ")) }

	// Inbound: the sidecar's ports and the excluded ones return first, so an include list
	// cannot capture them.
	if c.IncludeInboundPorts.All || len(c.IncludeInboundPorts.List) > 0 {
		for _, p := range AlwaysExcludedInboundPorts {
			add(ChainInbound, "-p tcp --dport", p.match(), "-j RETURN")
		}
		for _, p := range c.ExcludeInboundPorts {
			if alwaysExcluded(p) {
				continue
			}
			add(ChainInbound, "-p tcp --dport", Port(p).match(), "-j RETURN")
		}
		if c.IncludeInboundPorts.All {
			add(ChainInbound, "-p tcp -j", ChainInRedirect)
		}
		for _, p := range c.IncludeInboundPorts.List {
			add(ChainInbound, "-p tcp --dport", Port(p).match(), "-j", ChainInRedirect)
		}
	}
	add(ChainInRedirect, "-p tcp -j REDIRECT --to-ports", itoa(uint64(c.InboundPort)))

	// Outbound. Excluded ports first: they hold even for the proxy's loopback hop.
	for _, p := range c.ExcludeOutboundPorts {
		add(ChainOutput, "-p tcp --dport", Port(p).match(), "-j RETURN")
	}
	// The sidecar's hop to the app from the passthrough source is never captured.
	add(ChainOutput, "-s", f.passthrough(), "-o lo -j RETURN")
	loopbackIncluded := includesLoopback(c.IncludeOutboundIPRanges, f)
	owner := func(kind string, id uint32) {
		n := itoa(uint64(id))
		// The sidecar calling the pod's own address (a Service whose endpoint is this pod)
		// goes through inbound capture, so inbound policy applies to the hairpin as to any
		// caller. Istio jumps straight to ISTIO_IN_REDIRECT; Weft goes through WEFT_INBOUND
		// so the inbound excludes (15020, excludeInboundPorts) hold here too.
		add(ChainOutput, "! -d", f.loopback(), "-o lo -p tcp -m owner --"+kind+"-owner", n, "-j", ChainInbound)
		// The app calling itself over the loopback (its own pod IP) is not captured, unless
		// the include list names a loopback range.
		if !loopbackIncluded {
			add(ChainOutput, "-o lo -m owner ! --"+kind+"-owner", n, "-j RETURN")
		}
		// The sidecar's own outbound traffic: capturing it would loop forever.
		add(ChainOutput, "-m owner --"+kind+"-owner", n, "-j RETURN")
	}
	for _, id := range c.ProxyUIDs {
		owner("uid", id)
	}
	for _, id := range c.ProxyGIDs {
		owner("gid", id)
	}
	// Calls to localhost: the sidecar's own listeners, containers talking to each other.
	add(ChainOutput, "-d", f.loopback(), "-j RETURN")
	for _, p := range c.ExcludeOutboundIPRanges {
		if familyOf(p.Addr().Is4()) == f {
			add(ChainOutput, "-d", p.String(), "-j RETURN")
		}
	}
	if c.IncludeOutboundIPRanges.All {
		add(ChainOutput, "-j", ChainRedirect)
	}
	for _, p := range c.IncludeOutboundIPRanges.Prefixes {
		if familyOf(p.Addr().Is4()) == f {
			add(ChainOutput, "-d", p.String(), "-j", ChainRedirect)
		}
	}
	add(ChainRedirect, "-p tcp -j REDIRECT --to-ports", itoa(uint64(c.OutboundPort)))

	return append(r, jumps(c)...)
}

func alwaysExcluded(p uint16) bool {
	for _, r := range AlwaysExcludedInboundPorts {
		if r.First <= p && p <= r.Last {
			return true
		}
	}
	return false
}

func familyOf(is4 bool) Family {
	if is4 {
		return IPv4
	}
	return IPv6
}

func includesLoopback(r IPRanges, f Family) bool {
	for _, p := range r.Prefixes {
		if familyOf(p.Addr().Is4()) == f && p.Addr().IsLoopback() {
			return true
		}
	}
	return false
}

// Script is the iptables-restore --noflush input that makes the nat table hold exactly
// Weft's rules, given current (the table as iptables-save -t nat prints it; empty if
// unknown). It is one transaction and safe to run again: it deletes every jump into a WEFT_
// chain already in PREROUTING or OUTPUT (so none is doubled, including one a different
// version installed), and the chain declarations flush Weft's chains before refilling them.
// Rules other than Weft's are kept.
func Script(c Config, f Family, current string) string {
	var b strings.Builder
	b.WriteString("*nat\n")
	rules := Rules(c, f)
	n := 0
	for _, line := range rules {
		if !strings.HasPrefix(line, ":") {
			break
		}
		b.WriteString(line + "\n")
		n++
	}
	for _, del := range staleJumps(current) {
		b.WriteString(del + "\n")
	}
	for _, line := range rules[n:] {
		b.WriteString(line + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// staleJumps are -D lines for the jumps into WEFT_ chains in current's nat table.
func staleJumps(current string) []string {
	var del []string
	inNat := false
	for _, line := range strings.Split(current, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			inNat = line == "*nat"
		case !inNat:
		case strings.HasPrefix(line, "-A PREROUTING ") || strings.HasPrefix(line, "-A OUTPUT "):
			if target(line) != "" && strings.HasPrefix(target(line), "WEFT_") {
				del = append(del, "-D"+strings.TrimPrefix(line, "-A"))
			}
		}
	}
	return del
}

// target is the -j argument of a saved rule.
func target(line string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "--jump" {
			return f[i+1]
		}
	}
	return ""
}
