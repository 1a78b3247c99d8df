package snapshot

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
)

// A Redis pool's passwords (client-pw, server-pw in testdata/redis.in.yaml, pool
// default/cache for app=web) are in the snapshot of a view only when the pool selects that
// view; labels of another namespace, other labels and another pool's standalone proxy get
// neither.
func TestRedisPasswordsOnlyInSelectedViews(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "redis.in.yaml"))
	res := Translate(in)
	for _, c := range []struct {
		v    View
		want bool
	}{
		{View{Namespace: "default", Labels: map[string]string{"app": "web"}}, true},
		{View{Namespace: "default", RedisProxy: "default/cache"}, true},
		{View{Namespace: "default", Labels: map[string]string{"app": "api"}}, false},
		{View{Namespace: "other", Labels: map[string]string{"app": "web"}}, false},
		{View{Namespace: "default", RedisProxy: "default/sessions", Labels: map[string]string{"app": "web"}}, false},
		{View{Namespace: "default"}, false},
	} {
		snap, err := res.Snapshot(c.v)
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for _, rs := range snap.Resources {
			for _, r := range rs.Items {
				b, err := proto.Marshal(r.Resource)
				if err != nil {
					t.Fatal(err)
				}
				for _, pw := range []string{"client-pw", "server-pw"} {
					if strings.Contains(string(b), pw) {
						found = append(found, pw)
					}
				}
			}
		}
		if got := len(found) > 0; got != c.want {
			t.Errorf("view %+v: passwords %v, want present=%v", c.v, found, c.want)
		}
	}
}

// secretsOf is a snapshot's SDS secrets by name, as the sidecar's client holds them.
func secretsOf(snap *cachev3.Snapshot) map[string]proto.Message {
	out := map[string]proto.Message{}
	for n, r := range snap.GetResources(resourcev3.SecretType) {
		out[n] = r.(proto.Message)
	}
	return out
}

// No password or token rides in a listener, route, cluster or endpoint of any view of any
// golden input: every one travels as an SDS secret, named by the resource that needs it.
func TestSecretsOnlyOverSDS(t *testing.T) {
	ins, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQueue("nats://10.244.0.1:4222", testCredential)
	if err != nil {
		t.Fatal(err)
	}
	sawSecrets := 0
	for _, path := range ins {
		in, views := readInput(t, path)
		in.Queue = q
		var values []string
		for _, s := range in.Secrets {
			for _, v := range s.Data {
				values = append(values, string(v))
			}
			for _, v := range s.StringData {
				values = append(values, v)
			}
		}
		res := Translate(in)
		for _, v := range append(views, View{Namespace: "default", Function: "default/x", AppPort: 8080}) {
			snap, err := res.Snapshot(v)
			if err != nil {
				t.Fatal(err)
			}
			secrets := secretsOf(snap)
			sawSecrets += len(secrets)
			for _, s := range secrets {
				if values = append(values, secretValues(t, s)...); len(values) == 0 {
					t.Fatalf("%s: secret %v holds no value", path, s)
				}
			}
			for _, ty := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType} {
				for n, r := range snap.GetResources(ty) {
					b, err := proto.Marshal(r.(proto.Message))
					if err != nil {
						t.Fatal(err)
					}
					for _, val := range values {
						if len(val) >= 4 && bytes.Contains(b, []byte(val)) {
							t.Errorf("%s view %+v: %s %s holds a secret value", path, v, ty, n)
						}
					}
				}
			}
		}
	}
	if sawSecrets == 0 {
		t.Fatal("no view of any golden input holds a secret: the test checks nothing")
	}
}

func secretValues(t *testing.T, m proto.Message) []string {
	t.Helper()
	g := m.(*tlsv3.Secret).GetGenericSecret()
	var out []string
	if s := g.GetSecret(); s != nil {
		out = append(out, s.GetInlineString())
	}
	for _, s := range g.GetSecrets() {
		out = append(out, s.GetInlineString())
	}
	return out
}

// A rotated password changes only the view's SDS version: its listeners and clusters
// keep theirs, so the sidecar gets one SDS push and nothing is rebuilt but the credential.
func TestRotationChangesOnlySecrets(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "redis.in.yaml"))
	v := View{Namespace: "default", Labels: map[string]string{"app": "web"}}
	before, err := Translate(in).Snapshot(v)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in.Secrets {
		for k := range in.Secrets[i].Data {
			in.Secrets[i].Data[k] = []byte("rotated-" + k)
		}
	}
	after, err := Translate(in).Snapshot(v)
	if err != nil {
		t.Fatal(err)
	}
	for _, ty := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType} {
		if before.GetVersion(ty) != after.GetVersion(ty) {
			t.Errorf("%s version changed with only a password: %s → %s", ty, before.GetVersion(ty), after.GetVersion(ty))
		}
	}
	if before.GetVersion(resourcev3.SecretType) == after.GetVersion(resourcev3.SecretType) {
		t.Fatal("SDS version did not change with the password: the rotation would never be pushed")
	}
	found := false
	for _, s := range secretsOf(after) {
		for _, val := range secretValues(t, s) {
			found = found || strings.HasPrefix(val, "rotated-")
		}
	}
	if !found {
		t.Fatal("the rotated password is not in the view's secrets")
	}
}

// Each queue identity's credential is its own secret, named for the identity: a function's
// pods get queue/<ns>/<fn> and nothing else, callers queue/<ns>, and the cluster names it.
func TestQueueSecretPerIdentity(t *testing.T) {
	q, err := NewQueue("nats://10.244.0.1:4222", testCredential)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := readInput(t, filepath.Join("testdata", "function-async.in.yaml"))
	in.Queue = q
	res := Translate(in)
	fn := in.MeshFunctions[0]
	for _, c := range []struct {
		v    View
		want string
	}{
		{View{Namespace: fn.Namespace, Function: fn.Namespace + "/" + fn.Name, AppPort: 8080}, contract.QueueSecretName(fn.Namespace, fn.Name)},
		{View{Namespace: "other"}, contract.QueueSecretName("other", "")},
	} {
		snap, err := res.Snapshot(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if got := sortedKeys(secretsOf(snap)); !slices.Equal(got, []string{c.want}) {
			t.Errorf("view %+v: secrets %v, want [%s]", c.v, got, c.want)
		}
		qc := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName].(*clusterv3.Cluster)
		md := qc.GetMetadata().GetFilterMetadata()[contract.QueueMetadataKey].GetFields()
		if md["password"] != nil || md["token"] != nil {
			t.Errorf("view %+v: the queue cluster's metadata holds the credential", c.v)
		}
	}
}

// No status condition names a secret's value: a RedisProxy whose Secret lacks a key, or
// whose pool is served, says which Secret and key, never what is in it.
func TestStatusNeverHoldsSecretValues(t *testing.T) {
	for _, path := range []string{"redis.in.yaml", "redis-upstream-auth.in.yaml"} {
		in, _ := readInput(t, filepath.Join("testdata", path))
		var values []string
		for i := range in.Secrets {
			for k, v := range in.Secrets[i].Data {
				values = append(values, string(v))
				// The same Secret with the key renamed: the pool reports the missing key.
				in.Secrets[i].Data[k+"-renamed"] = v
			}
		}
		missingKey := false
		for _, res := range []*Result{Translate(in), translateRenamed(in)} {
			for k, st := range res.Status {
				for _, c := range st.Conditions {
					missingKey = missingKey || strings.Contains(c.Message, "has no key")
					for _, v := range values {
						if strings.Contains(c.Message, v) {
							t.Errorf("%s: %s condition %s holds a secret value: %q", path, k, c.Type, c.Message)
						}
					}
				}
			}
		}
		if !missingKey {
			t.Errorf("%s: no condition reports a missing key: the test never saw that message", path)
		}
	}
}

// translateRenamed translates in with only the renamed keys left in every Secret (so pools
// report their keys missing), leaving in as it was.
func translateRenamed(in *Input) *Result {
	cp := *in
	cp.Secrets = nil
	for _, s := range in.Secrets {
		s = *s.DeepCopy()
		for k := range s.Data {
			if !strings.HasSuffix(k, "-renamed") {
				delete(s.Data, k)
			}
		}
		cp.Secrets = append(cp.Secrets, s)
	}
	return Translate(&cp)
}

// A sidecar from before SDS secrets ignores the weft.dev/secret reference and reads the
// passwords inline, where the translation leaves a placeholder it cannot read: it refuses
// the pool (and keeps its last good version) instead of serving it without a password.
// This sidecar, reading the reference, serves it with the secret.
func TestSidecarWithoutSDSFailsClosed(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "redis.in.yaml"))
	v := View{Namespace: "default", Labels: map[string]string{"app": "web"}}
	snap, err := Translate(in).Snapshot(v)
	if err != nil {
		t.Fatal(err)
	}
	l := snap.GetResources(resourcev3.ListenerType)[contract.RedisName("default", "cache")].(*listenerv3.Listener)
	clusters := map[string]*clusterv3.Cluster{}
	eps := map[string]*endpointv3.ClusterLoadAssignment{}
	for n, r := range snap.GetResources(resourcev3.ClusterType) {
		clusters[n] = r.(*clusterv3.Cluster)
	}
	for n, r := range snap.GetResources(resourcev3.EndpointType) {
		eps[n] = r.(*endpointv3.ClusterLoadAssignment)
	}
	cfg, err := config.RedisConfigWithSecrets(l, clusters, eps, secretsOf(snap))
	if err != nil || len(cfg.DownstreamPasswords) != 1 || cfg.DownstreamPasswords[0] != "client-pw" {
		t.Fatalf("with SDS: %v, downstream passwords %d", err, len(cfg.DownstreamPasswords))
	}
	old := proto.Clone(l).(*listenerv3.Listener)
	old.Metadata = nil // what a sidecar that knows no SDS secrets sees
	oldClusters := map[string]*clusterv3.Cluster{}
	for n, c := range clusters {
		c = proto.Clone(c).(*clusterv3.Cluster)
		if c.Metadata != nil {
			c.Metadata.TypedFilterMetadata = nil
		}
		oldClusters[n] = c
	}
	for name, c := range map[string]struct {
		l  *listenerv3.Listener
		cs map[string]*clusterv3.Cluster
	}{
		"the listener without its reference": {old, clusters},
		"the clusters without theirs":        {l, oldClusters},
	} {
		cfg, err := config.RedisConfigWithSecrets(c.l, c.cs, eps, secretsOf(snap))
		if err == nil || !strings.Contains(err.Error(), "inline") {
			t.Errorf("%s: %v (downstream passwords %d), want a refusal: the placeholder is not a password", name, err, len(cfg.DownstreamPasswords))
		}
	}
}

// A password Secret whose value is not UTF-8 (Secret data is any bytes) or is empty is a
// problem on the pool, which is not served, never a snapshot that fails to build (SDS
// carries passwords as strings) or one the sidecar refuses (no password to give): FuzzBuild
// found both. Every view's snapshot builds and passes the sidecar's own decoder.
func TestBadPasswordIsAProblemNotABadSnapshot(t *testing.T) {
	for _, tc := range []struct {
		value []byte
		says  string
	}{{[]byte{'<', 0xe4, 0x93}, "is not UTF-8 text"}, {nil, "is empty"}} {
		for _, path := range []string{"redis.in.yaml", "redis-upstream-auth.in.yaml"} {
			in, views := readInput(t, filepath.Join("testdata", path))
			for i := range in.Secrets {
				for k := range in.Secrets[i].Data {
					in.Secrets[i].Data[k] = tc.value
				}
			}
			res := Translate(in)
			for _, v := range views {
				snap, err := res.Snapshot(v)
				if err != nil {
					t.Fatalf("%s: view %+v: %v", path, v, err)
				}
				checkSidecarAccepts(t, snap, v)
			}
			reported := false
			for _, st := range res.Status {
				for _, c := range st.Conditions {
					reported = reported || strings.Contains(c.Message, tc.says)
				}
			}
			if !reported {
				t.Errorf("%s: no condition says the password %s", path, tc.says)
			}
		}
	}
}
