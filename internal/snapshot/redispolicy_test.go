package snapshot

import (
	"bytes"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// snapshotBytes is every resource of view v's snapshot, marshaled and concatenated.
func snapshotBytes(t *testing.T, res *Result, v View) (all []byte, names map[string][]string) {
	t.Helper()
	snap, err := res.Snapshot(v)
	if err != nil {
		t.Fatal(err)
	}
	names = map[string][]string{}
	for _, ty := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.SecretType, resourcev3.RouteType} {
		for n, r := range snap.GetResources(ty) {
			b, err := proto.Marshal(r.(proto.Message))
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, b...)
			names[ty] = append(names[ty], n)
		}
	}
	return all, names
}

// TestRedisPolicyViewsDiffer: two pods selected by one pool, of different ServiceAccounts,
// get different pool configs: the admitted one the pool with its passwords and servers, the
// refused one a refusing listener and not one byte of either password, nor the pool's
// cluster or server address.
func TestRedisPolicyViewsDiffer(t *testing.T) {
	in, _ := readInput(t, "testdata/redis-policy.in.yaml")
	res := Translate(in)
	web := View{Namespace: "default", Labels: map[string]string{"app": "web"}, ServiceAccount: "web"}
	secretsOf := [][]byte{[]byte("upstream-secret-bytes"), []byte("downstream-secret-bytes")}

	got, names := snapshotBytes(t, res, web)
	for _, s := range secretsOf {
		if !bytes.Contains(got, s) {
			t.Errorf("allowed view default/web: missing secret %q", s)
		}
	}
	if !strings.Contains(strings.Join(names[resourcev3.ClusterType], ","), "redis|default/sessions") {
		t.Errorf("allowed view: no pool cluster in %v", names[resourcev3.ClusterType])
	}

	for _, sa := range []string{"other", "intruder", ""} {
		v := web
		v.ServiceAccount = sa
		got, names := snapshotBytes(t, res, v)
		for _, s := range append(secretsOf, []byte("10.0.5.1"), []byte("sds:redis/default/sessions")) {
			if bytes.Contains(got, s) {
				t.Errorf("refused view %q: its snapshot holds %q", sa, s)
			}
		}
		if len(names[resourcev3.SecretType]) != 0 {
			t.Errorf("refused view %q: secrets %v", sa, names[resourcev3.SecretType])
		}
		for _, c := range names[resourcev3.ClusterType] {
			if strings.HasPrefix(c, "redis|") {
				t.Errorf("refused view %q: pool cluster %s", sa, c)
			}
		}
		if !bytes.Contains(got, []byte("envoy.filters.network.rbac")) {
			t.Errorf("refused view %q: no refusing RBAC filter", sa)
		}
		wantPolicy := "default/sessions-users/none"
		if sa == "intruder" {
			wantPolicy = "default/no-intruders/0"
		}
		if !bytes.Contains(got, []byte(wantPolicy)) {
			t.Errorf("refused view %q: the refusal does not name %s", sa, wantPolicy)
		}
	}

	// An identity of namespace ops is admitted by the namespaces entry, but ops pods are
	// not selected by the pool (its namespace is default): judged directly.
	if d, a := res.poolRefusal(ObjectKey{KindRedisProxy, "default", "sessions"}, "spiffe://cluster.local/ns/ops/sa/anyone"); d != "" || a != nil {
		t.Errorf("ops identity refused: %q %v", d, a)
	}
	// The DENY rule wins over an ALLOW that would admit: intruder is also not web, but a
	// DENY names its rule.
	if d, _ := res.poolRefusal(ObjectKey{KindRedisProxy, "default", "sessions"}, "spiffe://cluster.local/ns/default/sa/intruder"); d != "default/no-intruders/0" {
		t.Errorf("intruder: deny rule %q", d)
	}
	// An exact principal of another trust domain does not match the local one.
	if d, _ := res.poolRefusal(ObjectKey{KindRedisProxy, "default", "sessions"}, "spiffe://other.td/ns/default/sa/intruder"); d != "" {
		t.Errorf("intruder of another trust domain matched the exact principal: %q", d)
	}
}

// TestRedisPolicyIncludes: ACKs of the views serving a guarded pool count for the policy;
// a policy naming no existing pool is in no view.
func TestRedisPolicyIncludes(t *testing.T) {
	in, _ := readInput(t, "testdata/redis-policy.in.yaml")
	res := Translate(in)
	pol := func(n string) ObjectKey { return ObjectKey{KindMeshPolicy, "default", n} }
	web := View{Namespace: "default", Labels: map[string]string{"app": "web"}, ServiceAccount: "other", AppPort: 8080}
	if !res.Includes(web, pol("sessions-users")) || !res.Includes(web, pol("no-intruders")) {
		t.Error("a view serving the pool does not include its policies")
	}
	if res.Includes(web, pol("typo")) {
		t.Error("a policy naming no pool is included")
	}
	other := View{Namespace: "default", Labels: map[string]string{"app": "api"}, AppPort: 8080}
	if res.Includes(other, pol("sessions-users")) {
		t.Error("a view not serving the pool includes its policy")
	}
	// A pool policy is no HTTP policy: the inbound listener of a selected pod has no RBAC.
	if fs := res.rbacFilters(web); len(fs) != 0 {
		t.Errorf("pool policy reached the inbound listener: %d filters", len(fs))
	}
}

// TestViewServiceAccountRoundTrip: the ServiceAccount survives node metadata and changes
// the key; a view without one keeps the key it had before the field existed.
func TestViewServiceAccountRoundTrip(t *testing.T) {
	v := View{Namespace: "default", Labels: map[string]string{"app": "web"}, AppPort: 8080}
	before := v.Key()
	v.ServiceAccount = "web"
	if got := ViewFromNode(&corev3.Node{Id: "p.default", Metadata: NodeMetadata(v)}); got.ServiceAccount != "web" || got.Key() != v.Key() {
		t.Errorf("round trip: %+v", got)
	}
	if v.Key() == before {
		t.Error("the ServiceAccount does not change the view key")
	}
	v.ServiceAccount = ""
	if v.Key() != before {
		t.Error("a view without a ServiceAccount changed its key")
	}
}
