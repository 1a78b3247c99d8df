package snapshot

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// maxFuzzMutations bounds the mutations one fuzz input applies (three bytes each), so an
// input's cost stays near one translation.
const maxFuzzMutations = 16

// FuzzBuild translates the golden inputs after random mutations of their objects' specs
// and checks what the manager would serve: translation never panics, every view's
// snapshot builds, every resource passes its Envoy Validate, the snapshot is Consistent,
// and the sidecar's own decoder accepts all of it (no NACK, a complete config). Bad specs
// must become conditions on their object, never bad xDS.
//
// The input is a golden case (which) and mutation ops, three bytes each: which node of
// the objects' JSON to touch, what to do (replace with a value of the same kind or any
// kind, delete, duplicate a list item, empty a container, copy another node here) and
// which value. A mutation that no longer decodes into the object's Go type is dropped.
func FuzzBuild(f *testing.F) {
	cases, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil || len(cases) == 0 {
		f.Fatalf("no golden inputs: %v", err)
	}
	sort.Strings(cases)
	for i := range cases {
		f.Add(uint8(i), []byte{})
		f.Add(uint8(i), []byte{17, 0, 3, 101, 2, 0, 7, 5, 9})
	}
	f.Fuzz(func(t *testing.T, which uint8, ops []byte) {
		if len(ops) > 3*maxFuzzMutations {
			ops = ops[:3*maxFuzzMutations]
		}
		path := cases[int(which)%len(cases)]
		in, views := readInput(t, path)
		mutateInput(t, in, rawObjects(t, path), ops)
		res := Translate(in)
		for _, v := range views {
			snap, err := res.Snapshot(v)
			if err != nil {
				t.Fatalf("view %+v: %v", v, err)
			}
			if err := snap.Consistent(); err != nil {
				t.Fatalf("view %+v: %v", v, err)
			}
			for _, ty := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType} {
				for n, r := range snap.GetResources(ty) {
					if err := r.(interface{ Validate() error }).Validate(); err != nil {
						t.Errorf("view %+v: %s %s fails Envoy validation: %v", v, ty, n, err)
					}
					if _, err := proto.Marshal(r); err != nil {
						t.Errorf("view %+v: %s %s does not marshal: %v", v, ty, n, err)
					}
				}
			}
			checkSidecarAccepts(t, snap, v)
		}
	})
}

// mutable is one object the fuzzer edits: a pointer to it in the Input, its JSON form and
// the parts of that which may change (dotted for a nested field). These are the Weft specs
// and free-form data (Secret values, pod labels); names and the built-in kinds' specs
// (Services, EndpointSlices) are left alone, as the API server validates those strictly.
type mutable struct {
	obj  any
	tree map[string]any
	keys []string
	// schema is the CRD of a Weft kind. A mutation the API server would refuse is dropped,
	// so the fuzzer explores what users can store rather than what kubectl rejects with a
	// message; objects are translated as the API server serves them, defaults applied.
	// Golden objects its CEL rules refuse as read (stored before a rule existed) are held
	// to the OpenAPI schema only (admitted false).
	schema   *crdSchema
	admitted bool
}

// rawObjects returns the Weft objects of a golden input file as written (JSON form, no Go
// zero values), by kind in file order, matching readInput's slices.
func rawObjects(t testing.TB, path string) map[string][]map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]map[string]any{}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if kind, _ := obj["kind"].(string); kind == KindMeshRoute || kind == KindMeshFunction || kind == KindRedisProxy {
			out[kind] = append(out[kind], obj)
		}
	}
	return out
}

// mutateInput applies ops to the objects of in; see FuzzBuild. raw holds the Weft objects
// as rawObjects reads them.
func mutateInput(t testing.TB, in *Input, raw map[string][]map[string]any, ops []byte) {
	t.Helper()
	schemas, err := crdSchemas()
	if err != nil {
		t.Fatal(err)
	}
	var ms []*mutable
	add := func(obj any, tree map[string]any, keys ...string) {
		m := &mutable{obj: obj, tree: tree, keys: keys}
		if tree == nil {
			b, err := json.Marshal(obj)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &m.tree); err != nil {
				t.Fatal(err)
			}
		}
		if kind, _ := m.tree["kind"].(string); schemas[kind] != nil {
			m.schema = schemas[kind]
			_, err := m.schema.admit(m.tree)
			m.admitted = err == nil
		}
		ms = append(ms, m)
	}
	for i := range in.MeshRoutes {
		add(&in.MeshRoutes[i], raw[KindMeshRoute][i], "spec")
	}
	for i := range in.MeshFunctions {
		add(&in.MeshFunctions[i], raw[KindMeshFunction][i], "spec")
	}
	for i := range in.RedisProxies {
		add(&in.RedisProxies[i], raw[KindRedisProxy][i], "spec")
	}
	for i := range in.Secrets {
		add(&in.Secrets[i], nil, "data")
	}
	for i := range in.Pods {
		add(&in.Pods[i], nil, "metadata.labels")
	}
	for ; len(ops) >= 3; ops = ops[3:] {
		var nodes []node
		for _, m := range ms {
			for _, k := range m.keys {
				parent := m.tree
				for strings.Contains(k, ".") {
					var first string
					first, k, _ = strings.Cut(k, ".")
					parent, _ = parent[first].(map[string]any)
				}
				if v, ok := parent[k]; ok {
					nodes = collect(nodes, m, node{parent: parent, key: k}, v)
				}
			}
		}
		if len(nodes) == 0 {
			return
		}
		n := nodes[int(ops[0])%len(nodes)]
		before, _ := json.Marshal(n.m.tree)
		apply(n, nodes, ops[1], ops[2])
		if !n.m.decode() {
			// The mutation does not fit the Go type, or the API server would refuse it.
			n.m.tree = nil
			_ = json.Unmarshal(before, &n.m.tree)
		}
	}
}

// decode stores the mutated tree into the object, as the API server would serve it; false
// when it would refuse it or it does not fit the Go type.
func (m *mutable) decode() bool {
	tree := m.tree
	if m.schema != nil {
		var err error
		if tree, err = m.schema.check(m.tree, m.admitted); err != nil {
			return false
		}
	}
	b, err := json.Marshal(tree)
	if err != nil {
		return false
	}
	fresh := reflect.New(reflect.TypeOf(m.obj).Elem())
	if err := json.Unmarshal(b, fresh.Interface()); err != nil {
		return false
	}
	reflect.ValueOf(m.obj).Elem().Set(fresh.Elem())
	return true
}

// node is one value in an object's JSON tree and where it sits.
type node struct {
	m      *mutable
	parent any // map[string]any or *[]any
	key    string
	index  int
	value  any
}

func collect(out []node, m *mutable, at node, v any) []node {
	at.m, at.value = m, v
	out = append(out, at)
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = collect(out, m, node{parent: v, key: k}, v[k])
		}
	case []any:
		list := v
		for i := range v {
			out = collect(out, m, node{parent: &list, index: i}, v[i])
		}
	}
	return out
}

func set(n node, v any) {
	switch p := n.parent.(type) {
	case map[string]any:
		p[n.key] = v
	case *[]any:
		(*p)[n.index] = v
	}
}

// fuzzStrings and fuzzNumbers are the values mutations write: edges of the CRD schema
// (empty, zero, negative, overflowing), syntax that other layers parse (durations,
// regexps, host:port) and names that exist elsewhere in the inputs.
var (
	fuzzStrings = []string{"", "*", "/", "a", "x.example.com", "*.example.com", "0s", "1ms", "99999h", "-1s", "1.5",
		"bogus", "ketama", "modula", "random", "murmur", "Prefix", "Exact", "RegularExpression", "Suffix", "Present",
		"(", "[a-", ".*", "POST", "5xx", "reset", "retriable-status-codes", "127.0.0.1:1", "10.0.0.1", "::1", "a b",
		"UPPER", "h\u00e9llo", "x-\r\nevil", strings.Repeat("a", 300), "default", "reviews", "fail", "remap", "v1", "http",
		"{}", "rps", "concurrency", "Y2xpZW50LXB3"}
	fuzzNumbers = []float64{0, 1, -1, 2, 3, 100, 101, 599, 1000, 65535, 65536, 4294967295, 4294967296, 1e18, 0.5, -0.001, 1e-9}
)

func apply(n node, nodes []node, action, pick byte) {
	switch action % 6 {
	case 0: // a value of the same kind
		switch v := n.value.(type) {
		case string:
			set(n, fuzzStrings[int(pick)%len(fuzzStrings)])
		case float64:
			set(n, fuzzNumbers[int(pick)%len(fuzzNumbers)])
		case bool:
			set(n, !v)
		case map[string]any:
			v[fuzzStrings[int(pick)%len(fuzzStrings)]] = fuzzStrings[int(pick/3)%len(fuzzStrings)]
		case []any:
			if len(v) > 0 {
				set(n, append(v, v[int(pick)%len(v)]))
			}
		}
	case 1: // a value of any kind
		all := []any{nil, true, false, map[string]any{}, []any{}}
		for _, s := range fuzzStrings {
			all = append(all, s)
		}
		for _, x := range fuzzNumbers {
			all = append(all, x)
		}
		set(n, all[int(pick)%len(all)])
	case 2: // delete
		switch p := n.parent.(type) {
		case map[string]any:
			delete(p, n.key)
		case *[]any:
			// The list shrinks in its own parent at the next collect; here, blank the item.
			(*p)[n.index] = nil
		}
	case 3: // duplicate a list item in place
		if l, ok := n.value.([]any); ok && len(l) > 0 {
			i := int(pick) % len(l)
			set(n, append(append(append([]any{}, l[:i+1]...), l[i]), l[i+1:]...))
		}
	case 4: // empty a container
		switch n.value.(type) {
		case map[string]any:
			set(n, map[string]any{})
		case []any:
			set(n, []any{})
		}
	case 5: // copy another node's value here
		src := nodes[int(pick)%len(nodes)]
		b, _ := json.Marshal(src.value)
		var cp any
		_ = json.Unmarshal(b, &cp)
		set(n, cp)
	}
}

// Guard against the mutator silently doing nothing: on a rich golden case, most single
// mutations must change what translation sees.
func TestFuzzMutationsChangeTheInput(t *testing.T) {
	changed := 0
	for i := 0; i < 60; i++ {
		path := filepath.Join("testdata", "route-lb-variants.in.yaml")
		in, _ := readInput(t, path)
		before := fmt.Sprintf("%+v", *in)
		mutateInput(t, in, rawObjects(t, path), []byte{byte(i * 7), byte(i), byte(i * 13)})
		if fmt.Sprintf("%+v", *in) != before {
			changed++
		}
	}
	if changed < 30 {
		t.Fatalf("only %d of 60 single mutations changed the input; the mutator is broken", changed)
	}
}

// The schema check admits the golden objects (but for those written to show how
// translation treats objects stored before a rule refused them), and refuses what the CRD
// refuses; otherwise the fuzzer's mutations would be checked against nothing.
func TestGoldenInputsPassTheCRDSchema(t *testing.T) {
	schemas, err := crdSchemas()
	if err != nil {
		t.Fatal(err)
	}
	storedBeforeARule := map[string]bool{
		"route-all-fields.in.yaml MeshRoute default/reviews":            true, // a catch-all rule before the last
		"route-shadowed.in.yaml MeshRoute default/shadowed":             true, // likewise
		"route-conflict-unresolved.in.yaml MeshRoute default/reviews-b": true, // a subset spec.subsets lacks
	}
	ins, _ := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	admitted := 0
	for _, path := range ins {
		for kind, objs := range rawObjects(t, path) {
			for _, obj := range objs {
				md := obj["metadata"].(map[string]any)
				key := fmt.Sprintf("%s %s %s/%s", filepath.Base(path), kind, md["namespace"], md["name"])
				_, err := schemas[kind].admit(obj)
				if _, oerr := schemas[kind].check(obj, false); oerr != nil {
					t.Errorf("%s: refused by its CRD's OpenAPI schema: %v", key, oerr)
				}
				switch {
				case err == nil && storedBeforeARule[key]:
					t.Errorf("%s: admitted, but its case says the CRD refuses it", key)
				case err != nil && !storedBeforeARule[key]:
					t.Errorf("%s: refused by its CRD: %v", key, err)
				case err == nil:
					admitted++
				}
			}
		}
	}
	if admitted < 20 {
		t.Errorf("only %d golden objects pass the CRD schema", admitted)
	}
	bad := map[string]any{"apiVersion": "mesh.weft.dev/v1alpha1", "kind": "RedisProxy", "metadata": map[string]any{"name": "x", "namespace": "default"},
		"spec": map[string]any{"listener": map[string]any{"port": 6379}, "servers": []any{map[string]any{"name": "a", "address": "10.0.0.1:6379"}},
			"sharding": map[string]any{"distribution": "/"}}}
	if _, err := schemas["RedisProxy"].admit(bad); err == nil {
		t.Error("the schema check admits sharding.distribution \"/\", which the CRD's enum refuses")
	}
}
