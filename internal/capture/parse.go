package capture

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Pod annotations that steer capture: Istio's traffic.sidecar.istio.io/* names in Weft's
// domain, with the same value syntax (comma-separated lists; "*" where Istio allows it).
const (
	// AnnotationInterception picks how the app's traffic reaches the sidecar: InterceptionIPTables
	// or InterceptionProxyEnv. Unset, the manager's default applies.
	AnnotationInterception = "weft.dev/interception"
	// AnnotationIncludeOutboundIPRanges: CIDRs captured outbound, or "*" (the default); "" captures none.
	AnnotationIncludeOutboundIPRanges = "traffic.weft.dev/includeOutboundIPRanges"
	// AnnotationExcludeOutboundIPRanges: CIDRs never captured outbound ("*" is refused: use
	// includeOutboundIPRanges: "" to capture nothing).
	AnnotationExcludeOutboundIPRanges = "traffic.weft.dev/excludeOutboundIPRanges"
	// AnnotationExcludeOutboundPorts: destination ports never captured outbound.
	AnnotationExcludeOutboundPorts = "traffic.weft.dev/excludeOutboundPorts"
	// AnnotationIncludeInboundPorts: local ports captured inbound, or "*" (the default); "" captures none.
	AnnotationIncludeInboundPorts = "traffic.weft.dev/includeInboundPorts"
	// AnnotationExcludeInboundPorts: local ports never captured inbound (15000-15021 and 15090 never are).
	AnnotationExcludeInboundPorts = "traffic.weft.dev/excludeInboundPorts"
)

// Interception is how an app's traffic reaches its sidecar.
type Interception string

const (
	// InterceptionIPTables captures TCP with netfilter rules an init container installs
	// (needs NET_ADMIN for the init container); the app gets no proxy settings.
	InterceptionIPTables Interception = "iptables"
	// InterceptionProxyEnv sets HTTP_PROXY in the app's containers and installs no rules, for
	// clusters that do not allow NET_ADMIN; only HTTP clients that honour it are meshed.
	InterceptionProxyEnv Interception = "proxy-env"
)

// ParseInterception reads a weft.dev/interception value.
func ParseInterception(s string) (Interception, error) {
	switch m := Interception(strings.TrimSpace(s)); m {
	case InterceptionIPTables, InterceptionProxyEnv:
		return m, nil
	}
	return "", fmt.Errorf("%q is not an interception mode: use %q or %q", s, InterceptionIPTables, InterceptionProxyEnv)
}

// InterceptionOf is the pod's weft.dev/interception annotation, else def.
func InterceptionOf(annotations map[string]string, def Interception) (Interception, error) {
	v, ok := annotations[AnnotationInterception]
	if !ok {
		return def, nil
	}
	m, err := ParseInterception(v)
	if err != nil {
		return "", annotationError(AnnotationInterception, v, err)
	}
	return m, nil
}

// FromAnnotations is Default with the pod's traffic.weft.dev/* annotations applied. Its error
// names every unusable annotation and says what a valid value looks like, so the webhook can
// refuse the pod instead of capturing something other than what the user asked for.
func FromAnnotations(annotations map[string]string) (Config, error) {
	c := Default()
	var errs []error
	field := func(name string, parse func(string) error) {
		if v, ok := annotations[name]; ok {
			if err := parse(v); err != nil {
				errs = append(errs, annotationError(name, v, err))
			}
		}
	}
	field(AnnotationIncludeOutboundIPRanges, func(v string) (err error) {
		c.IncludeOutboundIPRanges, err = ParseIPRanges(v, true)
		return err
	})
	field(AnnotationExcludeOutboundIPRanges, func(v string) (err error) {
		var r IPRanges
		r, err = ParseIPRanges(v, false)
		c.ExcludeOutboundIPRanges = r.Prefixes
		return err
	})
	field(AnnotationExcludeOutboundPorts, func(v string) (err error) {
		var p Ports
		p, err = ParsePorts(v, false)
		c.ExcludeOutboundPorts = p.List
		return err
	})
	field(AnnotationIncludeInboundPorts, func(v string) (err error) {
		c.IncludeInboundPorts, err = ParsePorts(v, true)
		return err
	})
	field(AnnotationExcludeInboundPorts, func(v string) (err error) {
		var p Ports
		p, err = ParsePorts(v, false)
		c.ExcludeInboundPorts = p.List
		return err
	})
	return c, errors.Join(errs...)
}

func annotationError(name, value string, err error) error {
	return fmt.Errorf("annotation %s=%q: %w; fix or remove it", name, value, err)
}

// items splits a comma-separated list, dropping blanks (as Istio does), and bounds its length.
func items(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	if len(out) > MaxListEntries {
		return nil, fmt.Errorf("%d entries, at most %d are allowed", len(out), MaxListEntries)
	}
	return out, nil
}

// ParseIPRanges reads "*" (if allowAll) or comma-separated CIDRs such as 10.96.0.0/12 or
// fd00::/8. Host bits are cleared (10.1.2.3/8 is 10.0.0.0/8); a bare address is refused, as
// it is ambiguous to a reader (write 10.1.2.3/32).
func ParseIPRanges(s string, allowAll bool) (IPRanges, error) {
	if strings.TrimSpace(s) == "*" {
		if !allowAll {
			return IPRanges{}, errors.New(`"*" is not allowed here`)
		}
		return IPRanges{All: true}, nil
	}
	fields, err := items(s)
	if err != nil {
		return IPRanges{}, err
	}
	var r IPRanges
	for _, f := range fields {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			if f == "*" {
				return IPRanges{}, errors.New(`"*" must be the whole value`)
			}
			return IPRanges{}, fmt.Errorf("%q is not a CIDR (want an address/prefix-length such as 10.96.0.0/12 or fd00::/8)", f)
		}
		if p.Addr().Is4In6() {
			return IPRanges{}, fmt.Errorf("%q is an IPv4-mapped IPv6 range; write it as IPv4 (such as 10.0.0.0/8)", f)
		}
		p = p.Masked()
		if !slices.Contains(r.Prefixes, p) {
			r.Prefixes = append(r.Prefixes, p)
		}
	}
	return r, nil
}

// ParsePorts reads "*" (if allowAll) or comma-separated ports 1-65535.
func ParsePorts(s string, allowAll bool) (Ports, error) {
	if strings.TrimSpace(s) == "*" {
		if !allowAll {
			return Ports{}, errors.New(`"*" is not allowed here`)
		}
		return Ports{All: true}, nil
	}
	fields, err := items(s)
	if err != nil {
		return Ports{}, err
	}
	var p Ports
	for _, f := range fields {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			if f == "*" {
				return Ports{}, errors.New(`"*" must be the whole value`)
			}
			return Ports{}, fmt.Errorf("%q is not a port number (1-65535)", f)
		}
		if !slices.Contains(p.List, uint16(n)) {
			p.List = append(p.List, uint16(n))
		}
	}
	return p, nil
}

// String is the list form ParseIPRanges reads back.
func (r IPRanges) String() string {
	if r.All {
		return "*"
	}
	parts := make([]string, len(r.Prefixes))
	for i, p := range r.Prefixes {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// String is the list form ParsePorts reads back.
func (p Ports) String() string {
	if p.All {
		return "*"
	}
	return joinUints(p.List)
}

func joinUints[T uint16 | uint32](v []T) string {
	parts := make([]string, len(v))
	for i, n := range v {
		parts[i] = itoa(uint64(n))
	}
	return strings.Join(parts, ",")
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// Flag names of cmd/weft-init; Args renders a Config with them and RegisterFlags reads them.
const (
	FlagOutboundPort            = "outbound-port"
	FlagInboundPort             = "inbound-port"
	FlagProxyUID                = "proxy-uid"
	FlagProxyGID                = "proxy-gid"
	FlagIncludeOutboundIPRanges = "include-outbound-ip-ranges"
	FlagExcludeOutboundIPRanges = "exclude-outbound-ip-ranges"
	FlagExcludeOutboundPorts    = "exclude-outbound-ports"
	FlagIncludeInboundPorts     = "include-inbound-ports"
	FlagExcludeInboundPorts     = "exclude-inbound-ports"
)

// Args renders c as weft-init flags, every setting spelled out so the init container's
// command line shows exactly what it installs.
func (c Config) Args() []string {
	return []string{
		"--" + FlagOutboundPort + "=" + itoa(uint64(c.OutboundPort)),
		"--" + FlagInboundPort + "=" + itoa(uint64(c.InboundPort)),
		"--" + FlagProxyUID + "=" + joinUints(c.ProxyUIDs),
		"--" + FlagProxyGID + "=" + joinUints(c.ProxyGIDs),
		"--" + FlagIncludeOutboundIPRanges + "=" + c.IncludeOutboundIPRanges.String(),
		"--" + FlagExcludeOutboundIPRanges + "=" + IPRanges{Prefixes: c.ExcludeOutboundIPRanges}.String(),
		"--" + FlagExcludeOutboundPorts + "=" + joinUints(c.ExcludeOutboundPorts),
		"--" + FlagIncludeInboundPorts + "=" + c.IncludeInboundPorts.String(),
		"--" + FlagExcludeInboundPorts + "=" + joinUints(c.ExcludeInboundPorts),
	}
}

// RegisterFlags binds c's settings to fs; c's current values are the defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	port := func(name, usage string, dst *uint16) {
		fs.Func(name, usage+" (default "+itoa(uint64(*dst))+")", func(s string) error {
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil || n == 0 {
				return fmt.Errorf("%q is not a port number (1-65535)", s)
			}
			*dst = uint16(n)
			return nil
		})
	}
	ids := func(name, usage string, dst *[]uint32) {
		fs.Func(name, usage+" (default "+joinUints(*dst)+")", func(s string) error {
			fields, err := items(s)
			if err != nil {
				return err
			}
			if len(fields) == 0 {
				return errors.New("at least one id is needed: the sidecar's own traffic must be exempt or it loops")
			}
			var out []uint32
			for _, f := range fields {
				n, err := strconv.ParseUint(f, 10, 32)
				if err != nil {
					return fmt.Errorf("%q is not a numeric id", f)
				}
				out = append(out, uint32(n))
			}
			*dst = out
			return nil
		})
	}
	ranges := func(name, usage string, allowAll bool, set func(IPRanges)) {
		fs.Func(name, usage, func(s string) error {
			r, err := ParseIPRanges(s, allowAll)
			set(r)
			return err
		})
	}
	ports := func(name, usage string, allowAll bool, set func(Ports)) {
		fs.Func(name, usage, func(s string) error {
			p, err := ParsePorts(s, allowAll)
			set(p)
			return err
		})
	}
	port(FlagOutboundPort, "port of the sidecar's outbound capture listener on 127.0.0.1", &c.OutboundPort)
	port(FlagInboundPort, "port of the sidecar's inbound capture listener", &c.InboundPort)
	ids(FlagProxyUID, "comma-separated UIDs whose traffic is never captured (the sidecar's)", &c.ProxyUIDs)
	ids(FlagProxyGID, "comma-separated GIDs whose traffic is never captured (the sidecar's)", &c.ProxyGIDs)
	ranges(FlagIncludeOutboundIPRanges, `CIDRs captured outbound, or "*" (default "*"); empty: none`, true,
		func(r IPRanges) { c.IncludeOutboundIPRanges = r })
	ranges(FlagExcludeOutboundIPRanges, "CIDRs never captured outbound", false,
		func(r IPRanges) { c.ExcludeOutboundIPRanges = r.Prefixes })
	ports(FlagExcludeOutboundPorts, "destination ports never captured outbound", false,
		func(p Ports) { c.ExcludeOutboundPorts = p.List })
	ports(FlagIncludeInboundPorts, `ports captured inbound, or "*" (default "*"); empty: none`, true,
		func(p Ports) { c.IncludeInboundPorts = p })
	ports(FlagExcludeInboundPorts, "ports never captured inbound (15000-15021 and 15090 never are)", false,
		func(p Ports) { c.ExcludeInboundPorts = p.List })
}
