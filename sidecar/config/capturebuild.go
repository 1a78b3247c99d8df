package config

import (
	"fmt"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/weftmesh/weft/contract"
)

// passthroughKind turns a route whose one cluster is the passthrough or black-hole cluster
// into ActionPassthrough or ActionBlocked: the sidecar serves those itself (Envoy would
// reach the ORIGINAL_DST cluster, or find no host in the black hole).
func passthroughKind(r *Route) {
	if len(r.Clusters) != 1 {
		return
	}
	switch r.Clusters[0].Name {
	case contract.PassthroughClusterName:
		r.Kind = ActionPassthrough
	case contract.BlackHoleClusterName:
		r.Kind = ActionBlocked
	}
}

// PassthroughTable is the route table of a port no route configuration names: every request
// passes through (ALLOW_ANY) or is refused (blocked, REGISTRY_ONLY).
func PassthroughTable(blocked bool) *RouteTable {
	r := &Route{Name: contract.AllowAnyRouteName, Kind: ActionPassthrough,
		Clusters: []WeightedCluster{{Name: contract.PassthroughClusterName, Weight: 1}}, TotalWeight: 1}
	if blocked {
		r.Name, r.Kind, r.Clusters[0].Name = contract.BlockAllRouteName, ActionBlocked, contract.BlackHoleClusterName
	}
	vh := &VirtualHost{Name: r.Name, Domains: []string{"*"}, Routes: []*Route{r}}
	return &RouteTable{Name: r.Name, VirtualHosts: []*VirtualHost{vh}, exact: map[string]*VirtualHost{}, star: vh}
}

// Blocked reports whether unknown destinations are refused: the default chain goes to the
// black hole.
func (l *CaptureListener) Blocked() bool {
	return l.Default != nil && l.Default.TCP != nil && l.Default.TCP.Cluster == contract.BlackHoleClusterName
}

// ChainListenerName names the unbound HTTP listener of a capture listener's route
// configuration: <listener>|<route configuration>.
func ChainListenerName(listener, rds string) string { return listener + "|" + rds }

// buildCapture resolves a capture listener's route tables and clusters: every HTTP chain
// gets an unbound HTTPListener (one per route configuration), the explicit-proxy chain a
// bound one at the listener's address. An inbound listener without an HTTP chain for its
// own port gets no bound HTTP listener: the capture plane binds it (Bind). It returns
// what is missing.
func buildCapture(cfg *Config, info *ListenerInfo, res Resources) (missing []string, err error) {
	cl := info.Capture
	tables := map[string]*RouteTable{}
	byName := map[string]*HTTPListener{}
	chains := append(append([]*FilterChain(nil), cl.Chains...), cl.Default)
	for _, c := range chains {
		switch {
		case c == nil:
		case c.HTTP != nil && c.HTTP.Inline != nil:
			tables["\x00"+c.HTTP.Inline.Name] = c.HTTP.Inline
			for _, cn := range referencedClusters(c.HTTP.Inline) {
				if _, ok := res[resourcev3.ClusterType][cn]; !ok {
					missing = append(missing, "cluster "+cn+" (listener "+cl.Name+")")
				}
			}
		case c.HTTP != nil:
			if _, ok := tables[c.HTTP.RDSName]; !ok {
				rc, found := res[resourcev3.RouteType][c.HTTP.RDSName]
				if !found {
					missing = append(missing, "routes "+c.HTTP.RDSName+" (listener "+cl.Name+")")
					continue
				}
				t, err := DecodeRouteConfig(rc.(*routev3.RouteConfiguration))
				if err != nil {
					return nil, err
				}
				tables[c.HTTP.RDSName] = t
				for _, cn := range referencedClusters(t) {
					if _, ok := res[resourcev3.ClusterType][cn]; !ok {
						missing = append(missing, "cluster "+cn+" (routes "+t.Name+")")
					}
				}
			}
		case c.TCP != nil:
			if _, ok := res[resourcev3.ClusterType][c.TCP.Cluster]; !ok {
				missing = append(missing, "cluster "+c.TCP.Cluster+" (listener "+cl.Name+")")
			}
		}
	}
	if len(missing) > 0 {
		return missing, nil
	}
	ex := cl.ExplicitChain()
	if (ex == nil || ex.HTTP == nil) && cl.Inbound {
		// A pod that serves only TCP: nothing here speaks HTTP at the listener's own
		// port, so the capture plane binds the listener (CaptureListener.Bind).
		cl.Bind = true
		ex = nil
	} else if ex == nil || ex.HTTP == nil {
		return nil, fmt.Errorf("listener %s: needs an HTTP chain for connections that were not redirected (destination_port %s or metadata %s)",
			cl.Name, portOf(cl.Address), contract.ExplicitProxyMetadataKey)
	}
	var bound *HTTPListener
	if ex != nil {
		bound = &HTTPListener{Name: cl.Name, Address: cl.Address, StatPrefix: ex.HTTP.StatPrefix, Routes: tables[ex.HTTP.key()],
			Limits: cl.Limits, Fallback: PassthroughTable(cl.Blocked()), Authz: ex.HTTP.Authz}
	}
	for _, c := range chains {
		if c == nil || c.HTTP == nil {
			continue
		}
		if bound != nil && (c == ex || (!ex.Explicit && c.HTTP.key() == ex.HTTP.key())) {
			// The inbound listener's chains for the app port and for its own port share
			// one HTTP listener: one containerConcurrency, one set of stats.
			c.HTTP.Listener = bound.Name
			continue
		}
		name := ChainListenerName(cl.Name, strings.TrimPrefix(c.HTTP.key(), "\x00"))
		hl := byName[name]
		if hl == nil {
			hl = &HTTPListener{Name: name, StatPrefix: c.HTTP.StatPrefix, Routes: tables[c.HTTP.key()], Limits: c.HTTP.Limits, Authz: c.HTTP.Authz}
			byName[name] = hl
			cfg.HTTPListeners = append(cfg.HTTPListeners, hl)
		}
		c.HTTP.Listener = hl.Name
	}
	if bound == nil {
		cfg.CaptureListeners = append(cfg.CaptureListeners, cl)
		return nil, nil
	}
	if ex.Explicit {
		bound.RoutesByPort = map[uint32]*RouteTable{}
		for name, t := range tables {
			if p, err := strconv.ParseUint(name, 10, 16); err == nil && p != 0 {
				bound.RoutesByPort[uint32(p)] = t
			}
		}
	}
	cfg.HTTPListeners = append(cfg.HTTPListeners, bound)
	cfg.CaptureListeners = append(cfg.CaptureListeners, cl)
	return nil, nil
}

func portOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i+1:]
		}
	}
	return addr
}

// RoutesFor is the route table a request to host (a Host header or an absolute-form URI's
// authority) uses on this listener: the table named by its port (80 when it has none) on an
// explicit-proxy listener, else the listener's one table.
func (hl *HTTPListener) RoutesFor(host string) *RouteTable {
	if hl.RoutesByPort == nil {
		return hl.Routes
	}
	if t := hl.RoutesByPort[HostPort(host)]; t != nil {
		return t
	}
	return hl.Fallback
}

// HostPort is the port of a Host value, contract.DefaultHTTPPort when it names none.
func HostPort(host string) uint32 {
	for i := len(host) - 1; i >= 0; i-- {
		switch host[i] {
		case ':':
			if p, err := strconv.ParseUint(host[i+1:], 10, 16); err == nil {
				return uint32(p)
			}
			return contract.DefaultHTTPPort
		case ']':
			return contract.DefaultHTTPPort
		}
	}
	return contract.DefaultHTTPPort
}

// key names the chain's route table: its RDS name, or NUL and the inline configuration's.
func (h *HTTPChain) key() string {
	if h.Inline != nil {
		return "\x00" + h.Inline.Name
	}
	return h.RDSName
}
