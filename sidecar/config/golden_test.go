package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite testdata/*.out.yaml from the current decoder output")

// goldenKinds are the keys of a testdata/<case>.in.json file: the xDS resources of each
// type, in protojson as the control plane sends them.
var goldenKinds = []struct {
	key, url string
	new      func() proto.Message
}{
	{"listeners", resourcev3.ListenerType, func() proto.Message { return &listenerv3.Listener{} }},
	{"routes", resourcev3.RouteType, func() proto.Message { return &routev3.RouteConfiguration{} }},
	{"clusters", resourcev3.ClusterType, func() proto.Message { return &clusterv3.Cluster{} }},
	{"endpoints", resourcev3.EndpointType, func() proto.Message { return &endpointv3.ClusterLoadAssignment{} }},
	{"secrets", resourcev3.SecretType, func() proto.Message { return &tlsv3.Secret{} }},
}

// readGoldenInput decodes a testdata/<case>.in.json file into Resources keyed by the
// resource's name (a ClusterLoadAssignment's cluster_name).
func readGoldenInput(t testing.TB, path string) Resources {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var file map[string][]json.RawMessage
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	res := Resources{}
	known := map[string]bool{}
	for _, k := range goldenKinds {
		known[k.key] = true
		res[k.url] = map[string]proto.Message{}
		for i, raw := range file[k.key] {
			m := k.new()
			if err := protojson.Unmarshal(raw, m); err != nil {
				t.Fatalf("%s %s[%d]: %v", path, k.key, i, err)
			}
			name := resourceName(m)
			if _, dup := res[k.url][name]; dup {
				t.Fatalf("%s %s[%d]: name %q appears twice", path, k.key, i, name)
			}
			res[k.url][name] = m
		}
	}
	for k := range file {
		if !known[k] {
			t.Fatalf("%s: unknown key %q; use listeners, routes, clusters, endpoints or secrets", path, k)
		}
	}
	return res
}

func resourceName(m proto.Message) string {
	if cla, ok := m.(*endpointv3.ClusterLoadAssignment); ok {
		return cla.GetClusterName()
	}
	return m.(interface{ GetName() string }).GetName()
}

// decodeGolden is what the sidecar makes of a case: the exact error of every resource it
// would NACK, or else the build's outcome (a config still waiting for a reference, or the
// decoded config).
func decodeGolden(res Resources) map[string]any {
	nacks := map[string]string{}
	for _, k := range goldenKinds {
		for name, m := range res[k.url] {
			if err := Validate(k.url, m); err != nil {
				nacks[k.key+"/"+name] = err.Error()
			}
		}
	}
	if len(nacks) > 0 {
		return map[string]any{"nack": nacks}
	}
	cfg, err := Build(res, nil)
	var inc *IncompleteError
	switch {
	case errors.As(err, &inc):
		return map[string]any{"incomplete": inc.Missing}
	case err != nil:
		return map[string]any{"error": err.Error()}
	}
	return map[string]any{"config": dumpConfig(cfg)}
}

// TestDecodeGolden feeds every testdata/<case>.in.json to the decoder and compares the
// outcome with testdata/<case>.out.yaml. The mesh-* inputs are views the control plane's
// own golden cases produce (internal/snapshot/testdata); the others are written by hand for
// one decoder concern each, NACKs included with their exact message. Regenerate with
// go test ./sidecar/config -run TestDecodeGolden -update and review the diff like code.
func TestDecodeGolden(t *testing.T) {
	ins, err := filepath.Glob(filepath.Join("testdata", "*.in.json"))
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.json")
		t.Run(name, func(t *testing.T) {
			res := readGoldenInput(t, in)
			got, err := yaml.Marshal(decodeGolden(res))
			if err != nil {
				t.Fatal(err)
			}
			again, err := yaml.Marshal(decodeGolden(readGoldenInput(t, in)))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(got), string(again)); d != "" {
				t.Fatalf("decoding is not deterministic:\n%s", d)
			}
			outPath := filepath.Join("testdata", name+".out.yaml")
			if *update {
				if err := os.WriteFile(outPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatalf("%v (run go test ./sidecar/config -run TestDecodeGolden -update)", err)
			}
			var wantV, gotV any
			if err := yaml.Unmarshal(want, &wantV); err != nil {
				t.Fatalf("%s: %v", outPath, err)
			}
			if err := yaml.Unmarshal(got, &gotV); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(wantV, gotV); d != "" {
				t.Errorf("%s differs (-want +got); if intended, run go test ./sidecar/config -run TestDecodeGolden -update\n%s", outPath, d)
			}
		})
	}
}

// enumNames spells the decoder's enums in golden files; an enum missing here shows as its
// number, which the golden diff makes visible.
var enumNames = map[reflect.Type][]string{
	reflect.TypeOf(LBPolicy(0)):       {"RoundRobin", "LeastRequest", "Random", "RingHash"},
	reflect.TypeOf(ActionKind(0)):     {"Forward", "Redirect", "Direct"},
	reflect.TypeOf(PathKind(0)):       {"Prefix", "Exact", "Regex"},
	reflect.TypeOf(StringKind(0)):     {"Exact", "Prefix", "Suffix", "Contains", "Regex"},
	reflect.TypeOf(HashPolicyKind(0)): {"Header", "Cookie", "Query", "SourceIP"},
	reflect.TypeOf(HeaderAction(0)):   {"AppendOrAdd", "AddIfAbsent", "OverwriteOrAdd", "OverwriteIfExists"},
	reflect.TypeOf(Health(0)):         {"Healthy", "Draining", "Unhealthy"},
}

var retryOnNames = []string{"5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream", "retriable-status-codes"}

// dumpConfig renders a decoded Config as plain values (maps, lists, strings, numbers) for a
// stable YAML rendering: exported fields only, zero values left out (enums always shown),
// durations and regexps as text, raw protos by type and name. It walks the types by
// reflection, so a field added to Config shows up in the golden files without editing this.
func dumpConfig(cfg *Config) any {
	v := reflect.ValueOf(*cfg)
	out := map[string]any{}
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		if f.Name == "Raw" || f.Name == "Versions" { // the input itself, and none given
			continue
		}
		if d := dumpValue(v.Field(i)); d != nil {
			out[f.Name] = d
		}
	}
	return out
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	regexpType   = reflect.TypeOf(&regexp.Regexp{})
	protoType    = reflect.TypeOf((*proto.Message)(nil)).Elem()
	errorType    = reflect.TypeOf((*error)(nil)).Elem()
	stringerType = reflect.TypeOf((*fmt.Stringer)(nil)).Elem()
)

func dumpValue(v reflect.Value) any {
	if !v.IsValid() {
		return nil
	}
	t := v.Type()
	switch {
	case (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface || v.Kind() == reflect.Map || v.Kind() == reflect.Slice) && v.IsNil():
		return nil
	case t.Implements(protoType):
		m := v.Interface().(proto.Message)
		return fmt.Sprintf("%s %s", m.ProtoReflect().Descriptor().FullName(), resourceName(m))
	case t.Implements(errorType):
		return v.Interface().(error).Error()
	case t == durationType:
		return time.Duration(v.Int()).String()
	case t == regexpType:
		return v.Interface().(*regexp.Regexp).String()
	case t == reflect.TypeOf(RetryOn(0)):
		var on []string
		for i, n := range retryOnNames {
			if uint32(v.Uint())&(1<<i) != 0 {
				on = append(on, n)
			}
		}
		return strings.Join(on, ",")
	}
	if names, ok := enumNames[t]; ok {
		if i := int(v.Int()); i >= 0 && i < len(names) {
			return names[i]
		}
		return v.Int()
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		return dumpValue(v.Elem())
	case reflect.Struct:
		out := map[string]any{}
		for i := 0; i < v.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			_, enum := enumNames[f.Type]
			if isEmpty(v.Field(i)) && !enum {
				continue
			}
			if d := dumpValue(v.Field(i)); d != nil {
				out[f.Name] = d
			}
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			out[fmt.Sprint(k.Interface())] = dumpValue(v.MapIndex(k))
		}
		return out
	case reflect.Slice, reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = dumpValue(v.Index(i))
		}
		return out
	case reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return nil
	}
	if t.Implements(stringerType) && t.PkgPath() != "" {
		return v.Interface().(fmt.Stringer).String()
	}
	return v.Interface()
}

// isEmpty is true for zero values and for empty lists and maps, so the golden files do not
// tell a nil slice from an empty one: no reader of the config does.
func isEmpty(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Slice, reflect.Map:
		return v.Len() == 0
	}
	return v.IsZero()
}
