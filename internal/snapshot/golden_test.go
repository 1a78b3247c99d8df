package snapshot

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
)

var update = flag.Bool("update", false, "rewrite testdata/*.out.yaml from the current output")

// testView is a test-only document kind in .in.yaml files naming a sidecar view to render.
type testView struct {
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
	Function  string            `json:"function,omitempty"`
	AppPort   uint32            `json:"appPort,omitempty"`
	// InboundCapture: a TCP-only pod's captured inbound (tcpInbound).
	InboundCapture bool `json:"inboundCapture,omitempty"`
	// RedisProxy makes the view a RedisProxy's standalone proxy.
	RedisProxy string `json:"redisProxy,omitempty"`
	// ServiceAccount is the view's verified ServiceAccount (MeshPolicies on RedisProxy pools).
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Gateway makes the view the gateway's (gateway.go).
	Gateway bool `json:"gateway,omitempty"`
}

// readInput decodes a multi-document YAML file of Kubernetes objects (and View documents).
func readInput(t testing.TB, path string) (*Input, []View) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	in := &Input{}
	var views []View
	for i, doc := range strings.Split(string(data), "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s doc %d: %v", path, i, err)
		}
		var dst any
		switch meta.Kind {
		case "MeshRoute":
			in.MeshRoutes = append(in.MeshRoutes, meshv1alpha1.MeshRoute{})
			dst = &in.MeshRoutes[len(in.MeshRoutes)-1]
		case "MeshFunction":
			in.MeshFunctions = append(in.MeshFunctions, meshv1alpha1.MeshFunction{})
			dst = &in.MeshFunctions[len(in.MeshFunctions)-1]
		case "RedisProxy":
			in.RedisProxies = append(in.RedisProxies, meshv1alpha1.RedisProxy{})
			dst = &in.RedisProxies[len(in.RedisProxies)-1]
		case "MeshPolicy":
			in.MeshPolicies = append(in.MeshPolicies, meshv1alpha1.MeshPolicy{})
			dst = &in.MeshPolicies[len(in.MeshPolicies)-1]
		case "Service":
			in.Services = append(in.Services, corev1.Service{})
			dst = &in.Services[len(in.Services)-1]
		case "EndpointSlice":
			in.EndpointSlices = append(in.EndpointSlices, discoveryv1.EndpointSlice{})
			dst = &in.EndpointSlices[len(in.EndpointSlices)-1]
		case "Pod":
			in.Pods = append(in.Pods, metav1.PartialObjectMetadata{})
			dst = &in.Pods[len(in.Pods)-1]
		case "Secret":
			in.Secrets = append(in.Secrets, corev1.Secret{})
			dst = &in.Secrets[len(in.Secrets)-1]
		case "ReferenceGrant":
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s doc %d: %v", path, i, err)
			}
			in.ReferenceGrants = append(in.ReferenceGrants, ReferenceGrantFrom(obj))
			continue
		case "Deployment":
			in.Deployments = append(in.Deployments, metav1.PartialObjectMetadata{})
			dst = &in.Deployments[len(in.Deployments)-1]
		case "MeshConfig":
			// Test-only: the manager's mesh-wide options.
			var mc struct {
				OutboundTrafficPolicy string `json:"outboundTrafficPolicy"`
			}
			if err := yaml.UnmarshalStrict([]byte(stripTypeMeta(doc)), &mc); err != nil {
				t.Fatalf("%s doc %d: %v", path, i, err)
			}
			in.OutboundTrafficPolicy = contract.OutboundTrafficPolicy(mc.OutboundTrafficPolicy)
			continue
		case "View":
			var tv testView
			if err := yaml.UnmarshalStrict([]byte(stripTypeMeta(doc)), &tv); err != nil {
				t.Fatalf("%s doc %d: %v", path, i, err)
			}
			views = append(views, View(tv))
			continue
		default:
			t.Fatalf("%s doc %d: unknown kind %q", path, i, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), dst); err != nil {
			t.Fatalf("%s doc %d (%s): %v", path, i, meta.Kind, err)
		}
	}
	if len(views) == 0 {
		views = []View{{Namespace: "default"}}
	}
	return in, views
}

func stripTypeMeta(doc string) string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(l, "apiVersion:") || strings.HasPrefix(l, "kind:") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// resourceKinds are the xDS types a golden view lists, under these keys, in this order.
var resourceKinds = []struct {
	key, url string
	new      func() proto.Message
}{
	{"listeners", resourcev3.ListenerType, func() proto.Message { return &listenerv3.Listener{} }},
	{"routes", resourcev3.RouteType, func() proto.Message { return &routev3.RouteConfiguration{} }},
	{"clusters", resourcev3.ClusterType, func() proto.Message { return &clusterv3.Cluster{} }},
	{"endpoints", resourcev3.EndpointType, func() proto.Message { return &endpointv3.ClusterLoadAssignment{} }},
	{"secrets", resourcev3.SecretType, func() proto.Message { return &tlsv3.Secret{} }},
}

// golden is a golden file parsed: conditions per object as YAML values, and each view's
// resources as protos by key, sorted by name. Both sides of a comparison are this type, so
// protos are compared as protos (protocmp) and the YAML is only their file format.
type golden struct {
	Status any
	Views  []goldenView
}

type goldenView struct {
	View      testView
	Resources map[string][]proto.Message
}

// translated renders every view of res, after checking the sidecar accepts each.
func translated(t testing.TB, res *Result, views []View) golden {
	t.Helper()
	status := map[string]any{}
	for k, st := range res.Status {
		var conds []map[string]string
		for _, c := range st.Conditions {
			conds = append(conds, map[string]string{"type": c.Type, "status": string(c.Status), "reason": c.Reason, "message": c.Message})
		}
		status[k.String()] = conds
	}
	// The status goes through YAML so it has the same Go types as a parsed file's.
	b, err := yaml.Marshal(status)
	if err != nil {
		t.Fatal(err)
	}
	g := golden{}
	if err := yaml.Unmarshal(b, &g.Status); err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		snap, err := res.Snapshot(v)
		if err != nil {
			t.Fatalf("snapshot of %+v: %v", v, err)
		}
		checkSidecarAccepts(t, snap, v)
		gv := goldenView{View: testView(v), Resources: map[string][]proto.Message{}}
		for _, ty := range resourceKinds {
			rs := snap.GetResources(ty.url)
			names := make([]string, 0, len(rs))
			for n := range rs {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				gv.Resources[ty.key] = append(gv.Resources[ty.key], rs[n].(proto.Message))
			}
		}
		g.Views = append(g.Views, gv)
	}
	return g
}

// render turns a translation into the golden YAML: conditions per object, then each
// view's resources by type, as protojson.
func render(t testing.TB, g golden) []byte {
	t.Helper()
	var vs []any
	for _, v := range g.Views {
		out := map[string]any{"view": v.View}
		for _, ty := range resourceKinds {
			var items []any
			for _, m := range v.Resources[ty.key] {
				js, err := protojson.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				var item any
				if err := yaml.Unmarshal(js, &item); err != nil {
					t.Fatal(err)
				}
				items = append(items, item)
			}
			if items == nil && ty.url == resourcev3.SecretType {
				continue // most views hold no secret: leave the key out
			}
			out[ty.key] = items
		}
		vs = append(vs, out)
	}
	b, err := yaml.Marshal(map[string]any{"status": g.Status, "views": vs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseGolden reads a golden file back into protos.
func parseGolden(t testing.TB, data []byte) golden {
	t.Helper()
	var file struct {
		Status any              `json:"status"`
		Views  []map[string]any `json:"views"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		t.Fatalf("golden file: %v", err)
	}
	g := golden{Status: file.Status}
	for i, v := range file.Views {
		gv := goldenView{Resources: map[string][]proto.Message{}}
		vb, err := json.Marshal(v["view"])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(vb, &gv.View); err != nil {
			t.Fatalf("golden view %d: %v", i, err)
		}
		for _, ty := range resourceKinds {
			items, _ := v[ty.key].([]any)
			for j, item := range items {
				js, err := json.Marshal(item)
				if err != nil {
					t.Fatal(err)
				}
				m := ty.new()
				if err := protojson.Unmarshal(js, m); err != nil {
					t.Fatalf("golden view %d %s[%d]: %v", i, ty.key, j, err)
				}
				gv.Resources[ty.key] = append(gv.Resources[ty.key], m)
			}
		}
		g.Views = append(g.Views, gv)
	}
	return g
}

// checkSidecarAccepts feeds the snapshot to the sidecar's own decoder: every resource must
// pass its validation (nothing it would NACK), the config must be complete, and every redis
// listener must decode.
func checkSidecarAccepts(t testing.TB, snap *cachev3.Snapshot, v View) {
	t.Helper()
	res := config.Resources{}
	for _, ty := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.SecretType} {
		res[ty] = map[string]proto.Message{}
		for n, r := range snap.GetResources(ty) {
			if err := config.Validate(ty, r.(proto.Message)); err != nil {
				t.Errorf("view %+v: the sidecar would NACK %s %s: %v", v, ty, n, err)
			}
			res[ty][n] = r.(proto.Message)
		}
	}
	cfg, err := config.Build(res, nil)
	var inc *config.IncompleteError
	if errors.As(err, &inc) || err != nil {
		t.Fatalf("view %+v: sidecar config build: %v", v, err)
	}
	// The view holds exactly the secrets its listeners and clusters name: go-control-plane
	// (ADS mode) answers an SDS request only when it names every secret of the snapshot.
	if got, want := config.SecretSubscriptions(res), sortedKeys(res[resourcev3.SecretType]); !slices.Equal(got, want) {
		t.Errorf("view %+v: resources name secrets %v, the view holds %v", v, got, want)
	}
	for _, rl := range cfg.RedisListeners {
		if _, err := config.RedisConfigWithSecrets(rl.Listener, rl.Clusters, rl.Endpoints, res[resourcev3.SecretType]); err != nil {
			t.Errorf("view %+v: the sidecar's redis proxy refuses listener %s: %v", v, rl.Listener.GetName(), err)
		}
	}
}

func TestGolden(t *testing.T) {
	ins, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			input, views := readInput(t, in)
			got := translated(t, Translate(input), views)
			again := translated(t, Translate(input), views)
			if d := cmp.Diff(got, again, protocmp.Transform()); d != "" {
				t.Fatalf("translation is not deterministic:\n%s", d)
			}
			gotYAML := render(t, got)
			if !bytes.Equal(gotYAML, render(t, again)) {
				t.Fatal("rendering is not deterministic")
			}
			outPath := filepath.Join("testdata", name+".out.yaml")
			if *update {
				if err := os.WriteFile(outPath, gotYAML, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantYAML, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/snapshot -update)", err)
			}
			if d := cmp.Diff(parseGolden(t, wantYAML), got, protocmp.Transform()); d != "" {
				t.Errorf("%s differs from the golden file (-want +got); if intended, run go test ./internal/snapshot -update\n%s", outPath, d)
			}
		})
	}
}
