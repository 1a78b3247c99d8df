package snapshot

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// sidecarInputs are views of these golden cases that sidecar/config's decoder golden test
// reads as testdata/<file>.in.json. The sidecar may not import this package, so the files
// are written here: go test ./internal/snapshot -update rewrites them after a translation
// change, and then go test ./sidecar/config -run TestDecodeGolden -update shows what the
// sidecar makes of the new output.
var sidecarInputs = []struct {
	golden string // testdata/<golden>.in.yaml
	view   int    // index of the view in that case
	file   string // sidecar/config/testdata/<file>.in.json
}{
	{"route-all-fields", 0, "mesh-route-all-fields"},
	{"route-lb-variants", 0, "mesh-lb-variants"},
	{"route-default-retries", 0, "mesh-default-retries"},
	{"route-headers", 0, "mesh-route-headers"},
	{"function", 0, "mesh-function"},
	{"function-async", 0, "mesh-function-async"},
	{"function-revisions", 0, "mesh-function-revisions"},
	{"redis", 0, "mesh-redis"},
	{"services-default", 0, "mesh-services"},
	{"services-default", 2, "mesh-services-inbound"},
	{"services-registry-only", 0, "mesh-services-registry-only"},
	{"services-tcp-only-inbound", 0, "mesh-services-tcp-only-inbound"},
}

// TestSidecarGoldenInputsFollowTranslation keeps the sidecar's mesh-* decoder inputs equal
// to what translation produces today (compared as protos), or rewrites them with -update.
func TestSidecarGoldenInputsFollowTranslation(t *testing.T) {
	for _, si := range sidecarInputs {
		t.Run(si.file, func(t *testing.T) {
			input, views := readInput(t, filepath.Join("testdata", si.golden+".in.yaml"))
			g := translated(t, Translate(input), views)
			if si.view >= len(g.Views) {
				t.Fatalf("%s has %d views, want view %d", si.golden, len(g.Views), si.view)
			}
			got := g.Views[si.view].Resources
			path := filepath.Join("..", "..", "sidecar", "config", "testdata", si.file+".in.json")
			if *update {
				file := map[string][]any{}
				for _, ty := range resourceKinds {
					items := []any{}
					for _, m := range got[ty.key] {
						js, err := protojson.Marshal(m)
						if err != nil {
							t.Fatal(err)
						}
						var item any
						if err := json.Unmarshal(js, &item); err != nil {
							t.Fatal(err)
						}
						items = append(items, item)
					}
					file[ty.key] = items
				}
				b, err := json.MarshalIndent(file, "", " ")
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/snapshot -update)", err)
			}
			var file map[string][]json.RawMessage
			if err := json.Unmarshal(data, &file); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			want := map[string][]proto.Message{}
			for _, ty := range resourceKinds {
				for i, raw := range file[ty.key] {
					m := ty.new()
					if err := protojson.Unmarshal(raw, m); err != nil {
						t.Fatalf("%s %s[%d]: %v", path, ty.key, i, err)
					}
					want[ty.key] = append(want[ty.key], m)
				}
			}
			if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
				t.Errorf("%s is not what translation produces (-file +translation); run go test ./internal/snapshot -update, then go test ./sidecar/config -run TestDecodeGolden -update\n%s", path, d)
			}
		})
	}
}
