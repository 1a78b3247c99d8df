package admin

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
)

const redacted = "[redacted]"

// Redact returns m with inline secrets replaced: every value of an SDS Secret (the Redis
// passwords and queue credentials the control plane sends), and, from a manager that still
// inlines them, the async queue's token or password and RedisProtocolOptions auth_password on
// clusters, and redis_proxy downstream_auth_password(s) on listeners. m itself is not
// modified (it is shared with the live config); a copy is returned when anything changed.
func Redact(m proto.Message) proto.Message {
	switch r := m.(type) {
	case *clusterv3.Cluster:
		if q, ok := r.GetMetadata().GetFilterMetadata()[contract.QueueMetadataKey]; ok && (q.GetFields()["token"] != nil || q.GetFields()["password"] != nil) {
			// The async queue's token or this identity's password rides in cluster metadata.
			c := proto.Clone(r).(*clusterv3.Cluster)
			f := c.Metadata.FilterMetadata[contract.QueueMetadataKey].Fields
			for _, k := range []string{"token", "password"} {
				if f[k] != nil {
					f[k] = structpb.NewStringValue(redacted)
				}
			}
			return c
		}
		a, ok := r.GetTypedExtensionProtocolOptions()[contract.RedisProtocolOptionsKey]
		if !ok {
			return m
		}
		var ro redisv3.RedisProtocolOptions
		if a.UnmarshalTo(&ro) != nil || ro.GetAuthPassword() == nil {
			return m
		}
		ro.AuthPassword = secret()
		c := proto.Clone(r).(*clusterv3.Cluster)
		if na, err := anypb.New(&ro); err == nil {
			c.TypedExtensionProtocolOptions[contract.RedisProtocolOptionsKey] = na
		}
		return c
	case *tlsv3.Secret:
		// An SDS secret: its name stays (an operator can see which secrets a sidecar holds
		// and compare versions), every value goes, whatever its type.
		out := &tlsv3.Secret{Name: r.GetName()}
		if g := r.GetGenericSecret(); g != nil {
			rg := &tlsv3.GenericSecret{}
			if g.GetSecret() != nil {
				rg.Secret = secret()
			}
			if len(g.GetSecrets()) > 0 {
				rg.Secrets = make(map[string]*corev3.DataSource, len(g.GetSecrets()))
				for k := range g.GetSecrets() {
					rg.Secrets[k] = secret()
				}
			}
			out.Type = &tlsv3.Secret_GenericSecret{GenericSecret: rg}
		}
		return out
	case *listenerv3.Listener:
		var l *listenerv3.Listener
		for i, fc := range r.GetFilterChains() {
			for j, f := range fc.GetFilters() {
				if f.GetName() != contract.RedisFilterName {
					continue
				}
				var rp redisv3.RedisProxy
				if f.GetTypedConfig().UnmarshalTo(&rp) != nil {
					continue
				}
				if rp.DownstreamAuthPassword != nil {
					rp.DownstreamAuthPassword = secret()
				}
				for k := range rp.DownstreamAuthPasswords {
					rp.DownstreamAuthPasswords[k] = secret()
				}
				na, err := anypb.New(&rp)
				if err != nil {
					continue
				}
				if l == nil {
					l = proto.Clone(r).(*listenerv3.Listener)
				}
				l.FilterChains[i].Filters[j].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: na}
			}
		}
		if l != nil {
			return l
		}
	}
	return m
}

func secret() *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: redacted}}
}
