package contract

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/structpb"
)

func ptr[T any](v T) *T { return &v }

// mustStruct parses JSON the way the control plane's metadata reads in docs/xds-contract.md.
func mustStruct(t *testing.T, js string) *structpb.Struct {
	t.Helper()
	s := &structpb.Struct{}
	if err := protojson.Unmarshal([]byte(js), s); err != nil {
		t.Fatalf("parsing %s: %v", js, err)
	}
	return s
}

// TestFunctionMetaRoundTrip encodes, checks the wire form against the documented JSON, and
// decodes back to the same value.
func TestFunctionMetaRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   FunctionMeta
		wire string
	}{{
		name: "full async policy",
		in: FunctionMeta{Namespace: "default", Name: "order-processing", HoldTimeout: 30 * time.Second,
			MaxPending: 100, ContainerConcurrency: 4, MinScale: 1, Timeout: 5 * time.Minute,
			Async: AsyncPolicy{Enabled: true, MaxAttempts: 5, MaxInflight: 10, MaxBodyBytes: 1 << 20,
				Backoff: time.Second, MaxBackoff: 30 * time.Second, MaxAge: 24 * time.Hour,
				DeadLetter: ptr(true), RetryOn: []int32{500, 502, 503, 504, 429}}},
		wire: `{"namespace": "default", "name": "order-processing", "holdTimeout": "30s", "maxPending": 100,
			"containerConcurrency": 4, "minScale": 1, "timeout": "5m0s",
			"async": {"enabled": true, "maxAttempts": 5, "backoff": "1s", "maxBackoff": "30s",
			          "retryOn": [500, 502, 503, 504, 429], "maxAge": "24h0m0s", "deadLetter": true,
			          "maxInflight": 10, "maxBodyBytes": 1048576}}`,
	}, {
		name: "async unset",
		in:   FunctionMeta{Namespace: "ns", Name: "fn", HoldTimeout: time.Second, MaxPending: 1, Timeout: time.Minute},
		wire: `{"namespace": "ns", "name": "fn", "holdTimeout": "1s", "maxPending": 1, "containerConcurrency": 0,
			"minScale": 0, "timeout": "1m0s", "async": {"enabled": false}}`,
	}, {
		name: "empty retryOn stays empty",
		in: FunctionMeta{Namespace: "ns", Name: "fn", HoldTimeout: time.Second, Timeout: time.Minute,
			Async: AsyncPolicy{Enabled: true, DeadLetter: ptr(false), RetryOn: []int32{}}},
		wire: `{"namespace": "ns", "name": "fn", "holdTimeout": "1s", "maxPending": 0, "containerConcurrency": 0,
			"minScale": 0, "timeout": "1m0s", "async": {"enabled": true, "deadLetter": false, "retryOn": []}}`,
	}, {
		name: "one revision's cluster",
		in:   FunctionMeta{Namespace: "ns", Name: "fn", Revision: "fn-00002", HoldTimeout: time.Second},
		wire: `{"namespace": "ns", "name": "fn", "revision": "fn-00002", "holdTimeout": "1s", "maxPending": 0,
			"containerConcurrency": 0, "minScale": 0, "async": {"enabled": false}}`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.Encode()
			if d := cmp.Diff(mustStruct(t, tc.wire), got, protocmp.Transform()); d != "" {
				t.Errorf("Encode (-want +got):\n%s", d)
			}
			back, err := DecodeFunctionMeta(got)
			if err != nil {
				t.Fatalf("DecodeFunctionMeta: %v", err)
			}
			if d := cmp.Diff(tc.in, back); d != "" {
				t.Errorf("round trip (-want +got):\n%s", d)
			}
		})
	}
}

func TestDecodeFunctionMetaForms(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     FunctionMeta
	}{
		{"older bare bool", `{"name": "fn", "async": true}`, FunctionMeta{Name: "fn", Async: AsyncPolicy{Enabled: true}}},
		{"async null", `{"name": "fn", "async": null}`, FunctionMeta{Name: "fn"}},
		{"async absent, unknown key ignored", `{"name": "fn", "newerKey": 1}`, FunctionMeta{Name: "fn"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeFunctionMeta(mustStruct(t, tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestDecodeFunctionMetaErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		policy         bool // the error is ErrAsyncPolicy: the rest is usable
	}{
		{"no name", `{"namespace": "ns"}`, "name is empty", false},
		{"name not a string", `{"name": 3}`, "name must be a string", false},
		{"revision not a string", `{"name": "fn", "revision": 2}`, "revision must be a string", false},
		{"bad holdTimeout", `{"name": "fn", "holdTimeout": "soon"}`, `holdTimeout "soon"`, false},
		{"fractional maxPending", `{"name": "fn", "maxPending": 1.5}`, "maxPending must be a whole number", false},
		{"bad timeout", `{"name": "fn", "timeout": "0s"}`, `timeout "0s" must be a positive duration`, true},
		{"async a string", `{"name": "fn", "async": "yes"}`, "async must be a boolean or an object", true},
		{"enabled a string", `{"name": "fn", "async": {"enabled": "yes"}}`, "async.enabled must be a boolean", true},
		{"too many attempts", `{"name": "fn", "async": {"enabled": true, "maxAttempts": 101}}`, "async.maxAttempts must be a whole number from 1 to 100", true},
		{"retryOn not a list", `{"name": "fn", "async": {"retryOn": 500}}`, "async.retryOn must be a list", true},
		{"retryOn not a status", `{"name": "fn", "async": {"retryOn": [99]}}`, "async.retryOn: 99 is not an HTTP status code", true},
		{"negative backoff", `{"name": "fn", "async": {"backoff": "-1s"}}`, `async.backoff "-1s" must be a positive duration`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeFunctionMeta(mustStruct(t, tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if errors.Is(err, ErrAsyncPolicy) != tc.policy {
				t.Errorf("errors.Is(err, ErrAsyncPolicy) = %v, want %v", !tc.policy, tc.policy)
			}
			if tc.policy && got.Name != "fn" {
				t.Errorf("with an async policy error the rest must still be decoded; got %+v", got)
			}
		})
	}
	// enabled is read before a later field fails, so a sidecar still knows calls are async.
	got, err := DecodeFunctionMeta(mustStruct(t, `{"name": "fn", "async": {"enabled": true, "maxInflight": 0}}`))
	if !errors.Is(err, ErrAsyncPolicy) || !got.Async.Enabled {
		t.Errorf("got %+v, %v; want Async.Enabled with an ErrAsyncPolicy error", got, err)
	}
}

func TestRedisPoolMetaRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   RedisPoolMeta
		wire string
	}{{
		name: "documented example",
		in: RedisPoolMeta{Distribution: "ketama", Hash: "fnv1a_64", HashTag: ptr("{}"), EjectMode: "remap",
			FailureLimit: 2, RetryTimeout: 30 * time.Second},
		wire: `{"distribution": "ketama", "hash": "fnv1a_64", "hashTag": "{}", "ejectMode": "remap", "failureLimit": 2, "retryTimeout": "30s"}`,
	}, {
		name: "no tag, no retry timeout",
		in:   RedisPoolMeta{Distribution: "modula", Hash: "md5", HashTag: ptr(""), EjectMode: "fail"},
		wire: `{"distribution": "modula", "hash": "md5", "hashTag": "", "ejectMode": "fail", "failureLimit": 0, "retryTimeout": "0s"}`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.Encode()
			if d := cmp.Diff(mustStruct(t, tc.wire), got, protocmp.Transform()); d != "" {
				t.Errorf("Encode (-want +got):\n%s", d)
			}
			back, err := DecodeRedisPoolMeta(got)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.in, back); d != "" {
				t.Errorf("round trip (-want +got):\n%s", d)
			}
		})
	}
	if _, err := DecodeRedisPoolMeta(mustStruct(t, `{"distribution": "ketama", "shards": 3}`)); err == nil || !strings.Contains(err.Error(), `unknown key "shards"`) {
		t.Errorf("unknown key: err = %v", err)
	}
	if _, err := DecodeRedisPoolMeta(mustStruct(t, `{"retryTimeout": "later"}`)); err == nil || !strings.Contains(err.Error(), `retryTimeout "later"`) {
		t.Errorf("bad retryTimeout: err = %v", err)
	}
	if m, err := DecodeRedisPoolMeta(nil); err != nil || m.HashTag != nil {
		t.Errorf("absent metadata: %+v, %v; want the zero value", m, err)
	}
}

func TestSmallMetaRoundTrip(t *testing.T) {
	q := QueueMeta{URL: "nats://10.0.0.1:4222", Token: "s3cret"}
	if d := cmp.Diff(mustStruct(t, `{"url": "nats://10.0.0.1:4222", "token": "s3cret"}`), q.Encode(), protocmp.Transform()); d != "" {
		t.Errorf("QueueMeta.Encode (-want +got):\n%s", d)
	}
	if back, err := DecodeQueueMeta(q.Encode()); err != nil || back != q {
		t.Errorf("QueueMeta round trip: %+v, %v", back, err)
	}
	if _, err := DecodeQueueMeta(mustStruct(t, `{"token": "x"}`)); err == nil || !strings.Contains(err.Error(), "url is missing") {
		t.Errorf("QueueMeta without url: err = %v", err)
	}
	id := QueueMeta{URL: "nats://10.0.0.1:4222", User: "fn.shop.resize", Password: "pw", InboxPrefix: "_INBOX.fn.shop.resize"}
	if d := cmp.Diff(mustStruct(t, `{"url": "nats://10.0.0.1:4222", "user": "fn.shop.resize", "password": "pw", "inboxPrefix": "_INBOX.fn.shop.resize"}`),
		id.Encode(), protocmp.Transform()); d != "" {
		t.Errorf("QueueMeta.Encode with an identity (-want +got):\n%s", d)
	}
	if back, err := DecodeQueueMeta(id.Encode()); err != nil || back != id {
		t.Errorf("QueueMeta identity round trip: %+v, %v", back, err)
	}
	for in, want := range map[string]string{
		`{"url": "nats://a:4222", "password": "pw"}`:                                        "come together",
		`{"url": "nats://a:4222", "user": "u", "password": "p", "inboxPrefix": "_INBOX.>"}`: "not a literal",
		`{"url": "nats://a:4222", "inboxPrefix": "_INBOX.x."}`:                              "not a literal",
	} {
		if _, err := DecodeQueueMeta(mustStruct(t, in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeQueueMeta(%s): err = %v, want %q", in, err, want)
		}
	}
	u := UnresolvedMeta{Reason: "Service default/missing not found"}
	if back, err := DecodeUnresolvedMeta(u.Encode()); err != nil || back != u {
		t.Errorf("UnresolvedMeta round trip: %+v, %v", back, err)
	}
	r := RouteMeta{Owner: "MeshRoute/default/reviews"}
	if d := cmp.Diff(mustStruct(t, `{"owner": "MeshRoute/default/reviews"}`), r.Encode(), protocmp.Transform()); d != "" {
		t.Errorf("RouteMeta.Encode (-want +got):\n%s", d)
	}
	if back, err := DecodeRouteMeta(r.Encode()); err != nil || back != r {
		t.Errorf("RouteMeta round trip: %+v, %v", back, err)
	}
	if _, err := DecodeRouteMeta(mustStruct(t, `{"owner": 7}`)); err == nil || !strings.Contains(err.Error(), "owner must be a string") {
		t.Errorf("RouteMeta with a number owner: err = %v", err)
	}
}

func TestNamesAgree(t *testing.T) {
	if want := "http://" + net.JoinHostPort(OutboundAddress, strconv.Itoa(OutboundPort)); OutboundProxyURL != want {
		t.Errorf("OutboundProxyURL = %q, want %q", OutboundProxyURL, want)
	}
	if got := FunctionClusterName("default", "fn"); got != "function|default/fn" {
		t.Errorf("FunctionClusterName = %q", got)
	}
	if got := ServiceClusterName(8080, "v1", "reviews", "default", "default", "r"); got != "outbound|8080|v1|reviews.default.svc.cluster.local|default/r" {
		t.Errorf("ServiceClusterName = %q", got)
	}
	if got := InboundClusterName(8080); got != "inbound|8080" {
		t.Errorf("InboundClusterName = %q", got)
	}
	if ns, name, ok := FunctionFromSubject(CallsSubject("default", "fn")); !ok || ns != "default" || name != "fn" {
		t.Errorf("FunctionFromSubject(CallsSubject) = %q %q %v", ns, name, ok)
	}
	for _, bad := range []string{"weft.calls.default", "weft.dead.default.fn", "weft.calls.a.b.c", "weft.calls..fn"} {
		if _, _, ok := FunctionFromSubject(bad); ok {
			t.Errorf("FunctionFromSubject(%q) accepted", bad)
		}
	}
}
