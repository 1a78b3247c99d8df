package contract

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// Keys of metadata.filter_metadata that carry Weft-only behaviour; Envoy ignores them.
const (
	// FunctionMetadataKey marks a function cluster; its payload is FunctionMeta.
	FunctionMetadataKey = "weft.dev/function"
	// RedisMetadataKey is a redis pool cluster's sharding policy; its payload is RedisPoolMeta.
	RedisMetadataKey = "weft.dev/redis"
	// UnresolvedMetadataKey marks a cluster standing in for an unresolved destination; its
	// payload is UnresolvedMeta.
	UnresolvedMetadataKey = "weft.dev/unresolved"
	// RouteMetadataKey is a route's owner; its payload is RouteMeta.
	RouteMetadataKey = "weft.dev/route"
	// QueueMetadataKey is the async queue's address on QueueClusterName; its payload is
	// QueueMeta.
	QueueMetadataKey = "weft.dev/nats"
)

// UnresolvedMeta is the weft.dev/unresolved cluster metadata.
type UnresolvedMeta struct {
	// Reason says what is missing; requests routed to the cluster get a 503 with it.
	Reason string
}

// Encode returns the metadata as a Struct.
func (m UnresolvedMeta) Encode() *structpb.Struct {
	return fields(map[string]*structpb.Value{"reason": structpb.NewStringValue(m.Reason)})
}

// DecodeUnresolvedMeta reads weft.dev/unresolved. A missing reason is empty (the sidecar
// then names the cluster).
func DecodeUnresolvedMeta(s *structpb.Struct) (UnresolvedMeta, error) {
	var m UnresolvedMeta
	err := str(s.GetFields(), "reason", &m.Reason)
	return m, err
}

// RouteMeta is the weft.dev/route route metadata.
type RouteMeta struct {
	// Owner is <kind>/<namespace>/<name> of the object the route comes from.
	Owner string
}

// Encode returns the metadata as a Struct.
func (m RouteMeta) Encode() *structpb.Struct {
	return fields(map[string]*structpb.Value{"owner": structpb.NewStringValue(m.Owner)})
}

// DecodeRouteMeta reads weft.dev/route.
func DecodeRouteMeta(s *structpb.Struct) (RouteMeta, error) {
	var m RouteMeta
	err := str(s.GetFields(), "owner", &m.Owner)
	return m, err
}

// QueueMeta is the weft.dev/nats cluster metadata: where the async queue is and how to
// authenticate. With the embedded server each sidecar gets its own identity's User and
// Password (and must use InboxPrefix for replies, the only subjects it may subscribe to);
// with an external cluster (--nats-url) every sidecar gets the one Token. The control plane
// sends the Password or Token as an SDS secret (QueueSecretName, named by the cluster's
// SecretRefMetadataKey), never in this metadata; the sidecar fills them in from the secret.
// Inline values are still read (a manager older than SDS secrets); sidecars redact them in
// /config_dump.
//
// With an external cluster whose account the manager signs for (decentralized JWT auth,
// docs/nats-identities.md), each sidecar gets its identity's user JWT and the NKEY seed it
// proves possession of the JWT's key with (JWT, Seed). Both travel only in the SDS secret
// (QueueSecretJWT, QueueSecretSeed): Encode never writes them and DecodeQueueMeta never
// reads them.
type QueueMeta struct {
	URL, Token     string
	User, Password string
	InboxPrefix    string
	JWT, Seed      string
}

// Encode returns the metadata as a Struct; empty credential fields are left out.
func (m QueueMeta) Encode() *structpb.Struct {
	f := map[string]*structpb.Value{"url": structpb.NewStringValue(m.URL)}
	for k, v := range map[string]string{"token": m.Token, "user": m.User, "password": m.Password, "inboxPrefix": m.InboxPrefix} {
		if v != "" {
			f[k] = structpb.NewStringValue(v)
		}
	}
	return fields(f)
}

// DecodeQueueMeta reads weft.dev/nats; the url is required, and a password comes with a
// user. A user without a password is accepted: its password arrives as an SDS secret.
func DecodeQueueMeta(s *structpb.Struct) (QueueMeta, error) {
	var m QueueMeta
	f := s.GetFields()
	if err := errors.Join(str(f, "url", &m.URL), str(f, "token", &m.Token), str(f, "user", &m.User),
		str(f, "password", &m.Password), str(f, "inboxPrefix", &m.InboxPrefix)); err != nil {
		return m, err
	}
	if m.URL == "" {
		return m, errors.New("url is missing: the control plane must send the queue's nats:// URL")
	}
	if m.User == "" && m.Password != "" {
		return m, errors.New("user and password come together: the control plane must send both or neither")
	}
	if strings.ContainsAny(m.InboxPrefix, "*> \t") || strings.HasSuffix(m.InboxPrefix, ".") {
		return m, fmt.Errorf("inboxPrefix %q is not a literal subject prefix", m.InboxPrefix)
	}
	return m, nil
}

// RedisPoolMeta is the weft.dev/redis cluster metadata of a redis pool.
type RedisPoolMeta struct {
	// Distribution is ketama, modula or random; empty: the sidecar's default (ketama).
	Distribution string
	// Hash is one of twemproxy's hash functions; empty: the sidecar's default (fnv1a_64).
	Hash string
	// HashTag is two characters or empty (no tag); nil: the listener's enable_hashtagging
	// decides.
	HashTag *string
	// EjectMode is remap or fail; empty: keep a down server in the ring.
	EjectMode string
	// FailureLimit consecutive failures eject a server (0: never).
	FailureLimit int32
	// RetryTimeout is how long an ejected server waits before it is probed (0: unset).
	RetryTimeout time.Duration
}

// Encode returns the metadata as a Struct. Every field is written: the control plane has
// already applied the API defaults.
func (m RedisPoolMeta) Encode() *structpb.Struct {
	f := map[string]*structpb.Value{
		"distribution": structpb.NewStringValue(m.Distribution),
		"hash":         structpb.NewStringValue(m.Hash),
		"ejectMode":    structpb.NewStringValue(m.EjectMode),
		"failureLimit": structpb.NewNumberValue(float64(m.FailureLimit)),
		"retryTimeout": structpb.NewStringValue(m.RetryTimeout.String()),
	}
	if m.HashTag != nil {
		f["hashTag"] = structpb.NewStringValue(*m.HashTag)
	}
	return fields(f)
}

// DecodeRedisPoolMeta reads weft.dev/redis. An unknown key is an error: a pool behaving
// differently from what the control plane meant would move keys between servers.
func DecodeRedisPoolMeta(s *structpb.Struct) (RedisPoolMeta, error) {
	var m RedisPoolMeta
	f := s.GetFields()
	for _, k := range sortedKeys(f) {
		var err error
		switch k {
		case "distribution":
			err = str(f, k, &m.Distribution)
		case "hash":
			err = str(f, k, &m.Hash)
		case "hashTag":
			var tag string
			err = str(f, k, &tag)
			m.HashTag = &tag
		case "ejectMode":
			err = str(f, k, &m.EjectMode)
		case "failureLimit":
			var n int64
			_, err = whole(f, k, 0, 1<<31-1, &n)
			m.FailureLimit = int32(n)
		case "retryTimeout":
			err = durationFrom(f, k, 0, &m.RetryTimeout)
		default:
			err = fmt.Errorf("unknown key %q: this sidecar does not know it; upgrade the sidecar or remove the key", k)
		}
		if err != nil {
			return m, err
		}
	}
	return m, nil
}

// fields wraps a field map in a Struct.
func fields(f map[string]*structpb.Value) *structpb.Struct { return &structpb.Struct{Fields: f} }

func sortedKeys(f map[string]*structpb.Value) []string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// str reads an optional string field.
func str(f map[string]*structpb.Value, key string, dst *string) error {
	v, ok := f[key]
	if !ok {
		return nil
	}
	s, isStr := v.GetKind().(*structpb.Value_StringValue)
	if !isStr {
		return fmt.Errorf("%s must be a string, got %v", key, v.AsInterface())
	}
	*dst = s.StringValue
	return nil
}

// boolean reads an optional bool field; it reports whether the field was there.
func boolean(f map[string]*structpb.Value, key string, dst *bool) (bool, error) {
	v, ok := f[key]
	if !ok {
		return false, nil
	}
	b, isBool := v.GetKind().(*structpb.Value_BoolValue)
	if !isBool {
		return false, fmt.Errorf("%s must be a boolean, got %v", key, v.AsInterface())
	}
	*dst = b.BoolValue
	return true, nil
}

// duration reads an optional duration string ("30s"); it must be positive.
func duration(f map[string]*structpb.Value, key string, dst *time.Duration) error {
	return durationFrom(f, key, 1, dst)
}

// durationFrom reads an optional duration string of at least lo.
func durationFrom(f map[string]*structpb.Value, key string, lo time.Duration, dst *time.Duration) error {
	v, ok := f[key]
	if !ok {
		return nil
	}
	s, isStr := v.GetKind().(*structpb.Value_StringValue)
	if !isStr {
		return fmt.Errorf("%s must be a duration string like \"30s\", got %v", key, v.AsInterface())
	}
	d, err := time.ParseDuration(s.StringValue)
	if err != nil || d < lo {
		what := "a positive"
		if lo <= 0 {
			what = "a non-negative"
		}
		return fmt.Errorf("%s %q must be %s duration like \"30s\"", key, s.StringValue, what)
	}
	*dst = d
	return nil
}

// whole reads an optional whole number in [lo, hi]; it reports whether the field was there.
func whole(f map[string]*structpb.Value, key string, lo, hi int64, dst *int64) (bool, error) {
	v, ok := f[key]
	if !ok {
		return false, nil
	}
	n, isNum := v.GetKind().(*structpb.Value_NumberValue)
	if !isNum || n.NumberValue != float64(int64(n.NumberValue)) || int64(n.NumberValue) < lo || int64(n.NumberValue) > hi {
		return false, fmt.Errorf("%s must be a whole number from %d to %d, got %v", key, lo, hi, v.AsInterface())
	}
	*dst = int64(n.NumberValue)
	return true, nil
}
