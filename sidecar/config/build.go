package config

import (
	"fmt"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// Resources are accepted raw xDS resources by type URL, then by name.
type Resources map[string]map[string]proto.Message

// IncompleteError says the resources do not yet form a complete config: something
// referenced has not arrived. The xDS client keeps waiting; it is not a NACK.
type IncompleteError struct{ Missing []string }

func (e *IncompleteError) Error() string {
	return "config incomplete, waiting for " + strings.Join(e.Missing, ", ")
}

// Validate decodes one resource of the given type, returning an error naming the first
// unsupported or invalid field. The xDS client NACKs a response when any resource fails.
func Validate(typeURL string, m proto.Message) error {
	var err error
	switch r := m.(type) {
	case *listenerv3.Listener:
		if _, err = DecodeListener(r); err == nil {
			if _, err = secretRef(r.GetMetadata()); err != nil {
				err = fmt.Errorf("listener %s: %w", r.GetName(), err)
			}
		}
	case *routev3.RouteConfiguration:
		_, err = DecodeRouteConfig(r)
	case *clusterv3.Cluster:
		if _, err = decodeCluster(r); err == nil {
			if _, err = secretRef(r.GetMetadata()); err != nil {
				err = fmt.Errorf("cluster %s: %w", r.GetName(), err)
			}
		}
	case *endpointv3.ClusterLoadAssignment:
		_, err = decodeEndpoints(r, "endpoints "+r.GetClusterName())
	case *tlsv3.Secret:
		_, _, err = decodeSecret(r)
	default:
		err = fmt.Errorf("resource type %s is not supported", typeURL)
	}
	return err
}

// Subscriptions returns the RDS and EDS resource names the given listeners and clusters
// need, sorted. The xDS client subscribes to exactly these (make-before-break: CDS then
// EDS, LDS then RDS).
func Subscriptions(res Resources) (rds, eds []string) {
	for _, m := range res[resourcev3.ListenerType] {
		info, err := DecodeListener(m.(*listenerv3.Listener))
		if err != nil {
			continue
		}
		if info.RDSName != "" {
			rds = append(rds, info.RDSName)
		}
		if cl := info.Capture; cl != nil {
			for _, c := range append(append([]*FilterChain(nil), cl.Chains...), cl.Default) {
				if c != nil && c.HTTP != nil {
					rds = append(rds, c.HTTP.RDSName)
				}
			}
		}
	}
	for _, m := range res[resourcev3.ClusterType] {
		c := m.(*clusterv3.Cluster)
		if c.GetType() == clusterv3.Cluster_EDS {
			eds = append(eds, edsName(c))
		}
	}
	sort.Strings(rds)
	sort.Strings(eds)
	return dedup(rds), dedup(eds)
}

func edsName(c *clusterv3.Cluster) string {
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// Build assembles a complete Config from accepted resources. It returns *IncompleteError
// while a referenced route configuration, cluster or endpoint set is missing, so a config
// is applied only when every reference resolves.
func Build(res Resources, versions map[string]string) (*Config, error) {
	cfg := &Config{Versions: map[string]string{}, Clusters: map[string]*Cluster{}, Raw: map[string]map[string]proto.Message{}}
	for k, v := range versions {
		cfg.Versions[k] = v
	}
	for t, byName := range res {
		cp := make(map[string]proto.Message, len(byName))
		for n, m := range byName {
			cp[n] = m
		}
		cfg.Raw[t] = cp
	}
	var missing []string
	for _, m := range res[resourcev3.ClusterType] {
		raw := m.(*clusterv3.Cluster)
		c, err := decodeCluster(raw)
		if err != nil {
			return nil, err
		}
		ref, err := secretRef(raw.GetMetadata())
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		if m, err := resolveQueue(c, ref, res[resourcev3.SecretType]); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		} else if m != "" {
			missing = append(missing, "secret "+m+" (cluster "+c.Name+")")
			continue
		}
		if !c.Static {
			cla, ok := res[resourcev3.EndpointType][edsName(raw)]
			if !ok {
				missing = append(missing, "endpoints "+edsName(raw))
				continue
			}
			eps, err := decodeEndpoints(cla.(*endpointv3.ClusterLoadAssignment), "cluster "+c.Name)
			if err != nil {
				return nil, err
			}
			for i := range eps {
				// Envoy picks the transport socket among the cluster's matches: an endpoint
				// marked for TLS in a cluster without the TLS match stays plaintext.
				eps[i].MeshTLS = eps[i].MeshTLS && c.MeshTLSMatch
			}
			c.Endpoints = eps
		}
		cfg.Clusters[c.Name] = c
	}
	names := sortedKeys(res[resourcev3.ListenerType])
	for _, name := range names {
		info, err := DecodeListener(res[resourcev3.ListenerType][name].(*listenerv3.Listener))
		if err != nil {
			return nil, err
		}
		if info.Capture != nil {
			m, err := buildCapture(cfg, info, res)
			if err != nil {
				return nil, err
			}
			missing = append(missing, m...)
			continue
		}
		if info.Redis != nil {
			rl := &RedisListener{Listener: info.Redis, Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
			complete := true
			waitSecret := func(md *corev3.Metadata, what string) {
				if ref, err := secretRef(md); err == nil && ref != "" {
					if _, ok := res[resourcev3.SecretType][ref]; !ok {
						missing = append(missing, "secret "+ref+" ("+what+")")
						complete = false
					}
				}
			}
			waitSecret(info.Redis.GetMetadata(), "listener "+name)
			for _, cn := range info.RedisClusters {
				cm, ok := res[resourcev3.ClusterType][cn]
				if !ok {
					missing = append(missing, "cluster "+cn+" (listener "+name+")")
					complete = false
					continue
				}
				rc := cm.(*clusterv3.Cluster)
				rl.Clusters[cn] = rc
				waitSecret(rc.GetMetadata(), "cluster "+cn+", listener "+name)
				if rc.GetType() == clusterv3.Cluster_EDS {
					cla, ok := res[resourcev3.EndpointType][edsName(rc)]
					if !ok {
						missing = append(missing, "endpoints "+edsName(rc)+" (listener "+name+")")
						complete = false
						continue
					}
					rl.Endpoints[cn] = cla.(*endpointv3.ClusterLoadAssignment)
				} else {
					rl.Endpoints[cn] = rc.GetLoadAssignment()
				}
			}
			if complete {
				// Decode now, so a pool the proxy cannot serve is known with its reason
				// before anything is applied. Its resources each passed their own checks;
				// what fails here is how they combine (a cluster's metadata against its
				// endpoints), so only this listener is held back (Err), not the build.
				// A pool with no servers yet is not such a failure.
				dc, err := RedisConfigWithSecrets(rl.Listener, rl.Clusters, rl.Endpoints, res[resourcev3.SecretType])
				if err != nil {
					rl.Err = fmt.Errorf("listener %s: %w", name, err)
				} else {
					rl.Decoded = dc
				}
			}
			cfg.RedisListeners = append(cfg.RedisListeners, rl)
			continue
		}
		hl := &HTTPListener{Name: info.Name, Address: info.Address, StatPrefix: info.StatPrefix, Routes: info.Inline, Limits: info.Limits, Authz: info.Authz}
		if info.RDSName != "" {
			rc, ok := res[resourcev3.RouteType][info.RDSName]
			if !ok {
				missing = append(missing, "routes "+info.RDSName)
				continue
			}
			if hl.Routes, err = DecodeRouteConfig(rc.(*routev3.RouteConfiguration)); err != nil {
				return nil, err
			}
		}
		for _, cn := range referencedClusters(hl.Routes) {
			if _, ok := res[resourcev3.ClusterType][cn]; !ok {
				missing = append(missing, "cluster "+cn+" (routes "+hl.Routes.Name+")")
			}
		}
		cfg.HTTPListeners = append(cfg.HTTPListeners, hl)
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, &IncompleteError{Missing: dedup(missing)}
	}
	return cfg, nil
}

func referencedClusters(t *RouteTable) []string {
	var out []string
	for _, vh := range t.VirtualHosts {
		for _, r := range vh.Routes {
			for _, c := range r.Clusters {
				out = append(out, c.Name)
			}
			for _, m := range r.Mirrors {
				out = append(out, m.Cluster)
			}
		}
	}
	return out
}

func sortedKeys(m map[string]proto.Message) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
