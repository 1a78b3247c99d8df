package snapshot

import (
	"bytes"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/admin"
	"github.com/weftmesh/weft/sidecar/config"
)

// testCredential stands for internal/queue's derived credentials: user and password name
// the identity.
func testCredential(namespace, function string) contract.QueueMeta {
	id := "ns." + namespace
	if function != "" {
		id = "fn." + namespace + "." + function
	}
	return contract.QueueMeta{User: id, Password: "pw-" + id, InboxPrefix: "_INBOX." + id}
}

// The sidecars that call or serve a function learn where the async queue is from one static
// cluster whose metadata they decode; the cluster carries the view's own credential, so a
// mesh without functions, and a standalone Redis proxy, never receive it. A bad URL is
// refused when the queue is made, not at translation.
func TestQueueReachesOnlyViewsWithFunctions(t *testing.T) {
	if _, err := NewQueue("not a url", nil); err == nil {
		t.Fatal("NewQueue accepted a URL without a host")
	}
	q, err := NewQueue("nats://10.244.0.1:4222", SharedQueueToken("tok"))
	if err != nil {
		t.Fatal(err)
	}
	hasQueue := func(res *Result, v View) bool {
		t.Helper()
		snap, err := res.Snapshot(v)
		if err != nil {
			t.Fatal(err)
		}
		checkSidecarAccepts(t, snap, v)
		c, ok := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName]
		if !ok {
			return false
		}
		got, err := config.Build(config.Resources{resourcev3.ClusterType: {contract.QueueClusterName: c.(proto.Message)},
			resourcev3.SecretType: secretsOf(snap)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if qm := got.Clusters[contract.QueueClusterName].Queue; qm == nil || qm.URL != "nats://10.244.0.1:4222" || qm.Token != "tok" {
			t.Fatalf("the sidecar decoded the queue as %+v", qm)
		}
		return true
	}

	// No MeshFunction: nobody has a function to call or serve.
	in, views := readInput(t, filepath.Join("testdata", "route-all-fields.in.yaml"))
	in.Queue = q
	res := Translate(in)
	for _, v := range views {
		if hasQueue(res, v) {
			t.Fatalf("view %+v got the queue credential in a mesh without functions", v)
		}
	}
	for _, c := range res.Clusters {
		if c.GetName() == contract.QueueClusterName {
			t.Fatal("the queue cluster is among the clusters every sidecar shares")
		}
	}

	// With a function: its pods and its callers get it, a standalone Redis proxy does not.
	in, _ = readInput(t, filepath.Join("testdata", "function-async.in.yaml"))
	in.Queue = q
	res = Translate(in)
	fn := in.MeshFunctions[0]
	for _, c := range []struct {
		v    View
		want bool
	}{
		{View{Namespace: fn.Namespace, Function: fn.Namespace + "/" + fn.Name, AppPort: 8080}, true},
		{View{Namespace: "other", Labels: map[string]string{"app": "web"}}, true},
		{View{Namespace: fn.Namespace, RedisProxy: fn.Namespace + "/cache"}, false},
	} {
		if got := hasQueue(res, c.v); got != c.want {
			t.Errorf("view %+v: queue credential sent = %v, want %v", c.v, got, c.want)
		}
	}
	for i := 1; i < len(res.Clusters); i++ {
		if res.Clusters[i-1].GetName() >= res.Clusters[i].GetName() {
			t.Fatalf("clusters not sorted after adding the queue: %s before %s", res.Clusters[i-1].GetName(), res.Clusters[i].GetName())
		}
	}
}

// Each view gets its own identity's credential: a function's pods the function's, every
// other sidecar its namespace's. A view naming a function of another namespace (which the
// control plane never derives from a pod) gets its namespace's, not that function's.
func TestQueueCredentialPerIdentity(t *testing.T) {
	q, err := NewQueue("nats://10.244.0.1:4222", testCredential)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := readInput(t, filepath.Join("testdata", "function-async.in.yaml"))
	in.Queue = q
	res := Translate(in)
	fn := in.MeshFunctions[0]
	credOf := func(v View) contract.QueueMeta {
		t.Helper()
		snap, err := res.Snapshot(v)
		if err != nil {
			t.Fatal(err)
		}
		c := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName]
		got, err := config.Build(config.Resources{resourcev3.ClusterType: {contract.QueueClusterName: c.(proto.Message)},
			resourcev3.SecretType: secretsOf(snap)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return *got.Clusters[contract.QueueClusterName].Queue
	}
	for _, c := range []struct {
		v    View
		want string
	}{
		{View{Namespace: fn.Namespace, Function: fn.Namespace + "/" + fn.Name, AppPort: 8080}, "fn." + fn.Namespace + "." + fn.Name},
		{View{Namespace: fn.Namespace, Labels: map[string]string{"app": "web"}}, "ns." + fn.Namespace},
		{View{Namespace: "other"}, "ns.other"},
		{View{Namespace: "other", Function: fn.Namespace + "/" + fn.Name, AppPort: 8080}, "ns.other"},
	} {
		got := credOf(c.v)
		want := testCredential(strings.TrimPrefix(c.want, "ns."), "")
		if ns, name, ok := strings.Cut(strings.TrimPrefix(c.want, "fn."), "."); ok && strings.HasPrefix(c.want, "fn.") {
			want = testCredential(ns, name)
		}
		want.URL = "nats://10.244.0.1:4222"
		if got != want {
			t.Errorf("view %+v: credential %+v, want %+v", c.v, got, want)
		}
	}
}

// A pod of a revision (labelled weft.dev/revision) of a function gets its revision's
// credential when the queue has one; a pod with the label but no function, or a queue
// without revision credentials (an external cluster's shared token), gets what it got
// before.
func TestQueueCredentialPerRevision(t *testing.T) {
	q, err := NewQueue("nats://10.244.0.1:4222", testCredential)
	if err != nil {
		t.Fatal(err)
	}
	q.RevisionCredential = func(ns, fn, rev string) contract.QueueMeta {
		id := "rev." + ns + "." + fn + "." + rev
		return contract.QueueMeta{User: id, Password: "pw-" + id, InboxPrefix: "_INBOX." + id}
	}
	in, _ := readInput(t, filepath.Join("testdata", "function-async.in.yaml"))
	in.Queue = q
	fn := in.MeshFunctions[0]
	rev := map[string]string{"weft.dev/revision": fn.Name + "-00002"}
	userOf := func(res *Result, v View) string {
		t.Helper()
		snap, err := res.Snapshot(v)
		if err != nil {
			t.Fatal(err)
		}
		c := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName]
		secrets := map[string]proto.Message{}
		for name, s := range snap.GetResources(resourcev3.SecretType) {
			secrets[name] = s.(proto.Message)
		}
		got, err := config.Build(config.Resources{resourcev3.ClusterType: {contract.QueueClusterName: c.(proto.Message)}, resourcev3.SecretType: secrets}, nil)
		if err != nil {
			t.Fatal(err)
		}
		q := got.Clusters[contract.QueueClusterName].Queue
		if want := "pw-" + q.User; q.User != "" && strings.HasPrefix(q.User, "rev.") && q.Password != want {
			t.Errorf("revision user %s got password %q over SDS, want %q", q.User, q.Password, want)
		}
		return q.User
	}
	res := Translate(in)
	if got, want := userOf(res, View{Namespace: fn.Namespace, Function: fn.Namespace + "/" + fn.Name, AppPort: 8080, Labels: rev}), "rev."+fn.Namespace+"."+fn.Name+"."+fn.Name+"-00002"; got != want {
		t.Errorf("a revision's pod connects as %q, want %q", got, want)
	}
	revView := View{Namespace: fn.Namespace, Function: fn.Namespace + "/" + fn.Name, AppPort: 8080, Labels: rev}
	if snap, err := res.Snapshot(revView); err != nil {
		t.Fatal(err)
	} else if _, ok := snap.GetResources(resourcev3.SecretType)[contract.QueueRevisionSecretName(fn.Namespace, fn.Name, fn.Name+"-00002")]; !ok {
		t.Errorf("a revision's pod has secrets %v, want its revision's queue secret", snap.GetResources(resourcev3.SecretType))
	}
	if got, want := userOf(res, View{Namespace: fn.Namespace, Labels: rev}), "ns."+fn.Namespace; got != want {
		t.Errorf("a pod of no function with a revision label connects as %q, want %q", got, want)
	}
	q.RevisionCredential = nil
	res = Translate(in)
	if got, want := userOf(res, View{Namespace: fn.Namespace, Function: fn.Namespace + "/" + fn.Name, AppPort: 8080, Labels: rev}), "fn."+fn.Namespace+"."+fn.Name; got != want {
		t.Errorf("without revision credentials a revision's pod connects as %q, want %q", got, want)
	}
}

// An external cluster's per-identity credential (a user JWT and its NKEY seed, minted by
// internal/queue's Issuer) travels only in the view's SDS secret, under the keys jwt and
// seed: never in the cluster, never with a token; the sidecar reads both back, and its
// /config_dump shows neither.
func TestQueueJWTCredentialOnlyInSecret(t *testing.T) {
	cred := func(namespace, function string) contract.QueueMeta {
		m := testCredential(namespace, function)
		m.Password = ""
		m.JWT, m.Seed = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ."+m.User+".sig", "SUAJWTSEED"+m.User
		return m
	}
	q, err := NewQueue("nats://10.244.0.1:4222", cred)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := readInput(t, filepath.Join("testdata", "function-async.in.yaml"))
	in.Queue = q
	res := Translate(in)
	fn := in.MeshFunctions[0]
	for _, v := range []View{
		{Namespace: fn.Namespace, Function: fn.Namespace + "/" + fn.Name, AppPort: 8080},
		{Namespace: "other", Labels: map[string]string{"app": "web"}},
	} {
		ns, function := queueIdentity(v)
		want := cred(ns, function)
		snap, err := res.Snapshot(v)
		if err != nil {
			t.Fatal(err)
		}
		c := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName].(proto.Message)
		b, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(want.JWT)) || bytes.Contains(b, []byte(want.Seed)) {
			t.Errorf("view %+v: the queue cluster holds the JWT or the seed", v)
		}
		sec, ok := secretsOf(snap)[contract.QueueSecretName(ns, function)].(*tlsv3.Secret)
		if !ok {
			t.Fatalf("view %+v: no queue secret", v)
		}
		vals := sec.GetGenericSecret().GetSecrets()
		if len(vals) != 2 || vals[contract.QueueSecretJWT].GetInlineString() != want.JWT || vals[contract.QueueSecretSeed].GetInlineString() != want.Seed {
			t.Errorf("view %+v: queue secret keys %v, want exactly jwt and seed", v, slices.Collect(maps.Keys(vals)))
		}
		got, err := config.Build(config.Resources{resourcev3.ClusterType: {contract.QueueClusterName: c}, resourcev3.SecretType: secretsOf(snap)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		want.URL = q.URL
		if qm := *got.Clusters[contract.QueueClusterName].Queue; qm != want {
			t.Errorf("view %+v: the sidecar decoded %+v, want %+v", v, qm, want)
		}
		rb, err := proto.Marshal(admin.Redact(sec))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(rb, []byte(want.JWT)) || bytes.Contains(rb, []byte(want.Seed)) {
			t.Errorf("view %+v: /config_dump's redacted secret holds the JWT or the seed", v)
		}
	}
}
