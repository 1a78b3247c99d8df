package contract

import (
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"
)

// NetworkRBACFilterName is Envoy's network RBAC filter
// (envoy.extensions.filters.network.rbac.v3.RBAC). A RedisProxy pool's listener carries up
// to two of them before redis_proxy when MeshPolicies target the pool (targetRefs): the
// DENY policies' filter first, then the ALLOW policies', checked once per connection on the
// peer's mutual-TLS identity (enforcement_type ONE_TIME_ON_FIRST_BYTE, Envoy's default).
// A sidecar-local pool the view's own identity may not use gets one DENY filter whose single
// policy matches every connection (docs/authorization.md, "Redis pools").
const NetworkRBACFilterName = "envoy.filters.network.rbac"

// RedisAuthzMetadataKey is a redis pool listener's authorization context, present whenever
// its listener carries network RBAC filters; its payload is RedisAuthzMeta.
const RedisAuthzMetadataKey = "weft.dev/redisAuthz"

// RedisAuthzMeta says, for the refusal a denied client reads, which pool the listener
// serves and, for a sidecar-local pool the control plane refused, whose identity it judged.
type RedisAuthzMeta struct {
	// Pool is <namespace>/<name> of the RedisProxy.
	Pool string
	// Judged is set when the control plane judged the view's own identity (a sidecar-local
	// pool) and refused it: the sidecar judges every connection as Caller, whatever its peer.
	Judged bool
	// Caller is the view's own SPIFFE ID (a sidecar-local pool; empty when the view has
	// none). Without Judged (an admitted pod whose pool listens beyond loopback) it is the
	// identity of connections from loopback, which come from the pod itself; other
	// connections are judged by their mutual-TLS peer.
	Caller string
}

// Encode returns the metadata as a Struct.
func (m RedisAuthzMeta) Encode() *structpb.Struct {
	f := map[string]*structpb.Value{"pool": structpb.NewStringValue(m.Pool)}
	if m.Judged {
		f["judged"] = structpb.NewBoolValue(true)
	}
	if m.Judged || m.Caller != "" {
		f["caller"] = structpb.NewStringValue(m.Caller)
	}
	return fields(f)
}

// DecodeRedisAuthzMeta reads weft.dev/redisAuthz; an unknown key is an error.
func DecodeRedisAuthzMeta(s *structpb.Struct) (RedisAuthzMeta, error) {
	var m RedisAuthzMeta
	f := s.GetFields()
	for _, k := range sortedKeys(f) {
		var err error
		switch k {
		case "pool":
			err = str(f, k, &m.Pool)
		case "caller":
			err = str(f, k, &m.Caller)
		case "judged":
			b, ok := f[k].GetKind().(*structpb.Value_BoolValue)
			if !ok {
				err = fmt.Errorf("judged: want a bool")
			} else {
				m.Judged = b.BoolValue
			}
		default:
			err = fmt.Errorf("unknown key %q: this sidecar does not know it; upgrade the sidecar or remove the key", k)
		}
		if err != nil {
			return m, err
		}
	}
	if m.Pool == "" {
		return m, fmt.Errorf("no pool")
	}
	return m, nil
}

// ALPNTCP is the ALPN protocol a caller's sidecar offers when it carries a plain TCP stream
// (such as Redis) over mutual TLS to a meshed server; a standalone Redis proxy accepts it
// (and no ALPN).
const ALPNTCP = "weft-tcp"
