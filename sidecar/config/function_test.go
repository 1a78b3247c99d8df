package config

import (
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

// The control plane sends "async" as the policy struct; older snapshots sent a bool. Both say
// whether calls to the function are asynchronous by default.
func TestFunctionMetaReadsBothAsyncForms(t *testing.T) {
	for name, tc := range map[string]struct {
		async any
		want  bool
	}{
		"struct enabled":  {map[string]any{"enabled": true, "maxAttempts": 3.0}, true},
		"struct disabled": {map[string]any{"enabled": false}, false},
		"bool true":       {true, true},
		"absent":          {nil, false},
	} {
		t.Run(name, func(t *testing.T) {
			m := map[string]any{"namespace": "shop", "name": "orders"}
			if tc.async != nil {
				m["async"] = tc.async
			}
			s, err := structpb.NewStruct(m)
			if err != nil {
				t.Fatal(err)
			}
			fm, err := DecodeFunctionMeta(s)
			if err != nil {
				t.Fatal(err)
			}
			if fm.Async != tc.want {
				t.Fatalf("Async = %v, want %v", fm.Async, tc.want)
			}
		})
	}
}
