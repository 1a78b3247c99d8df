package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/structpb"
)

func meta(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDecodeAsyncPolicy moved here from sidecar/async with the decoder: both contract forms
// of "async", defaults for what is unset, and a clear reason (with the defaults in force)
// for what is malformed.
func TestDecodeAsyncPolicy(t *testing.T) {
	def := DefaultAsyncPolicy()
	enabled := def
	enabled.Enabled = true
	custom := AsyncPolicy{Enabled: true, MaxAttempts: 5, Backoff: 2 * time.Second, MaxBackoff: 30 * time.Second,
		RetryOn: []int{503, 408}, MaxAge: time.Hour, DeadLetter: false, MaxInflight: 4, MaxBodyBytes: 4096, Timeout: 10 * time.Second}
	partial := def
	partial.MaxAttempts = 7
	for _, tc := range []struct {
		name string
		in   map[string]any
		want AsyncPolicy
		err  string
	}{
		{name: "no async key", in: map[string]any{"name": "fn"}, want: def},
		{name: "bool form (the original contract)", in: map[string]any{"async": true}, want: enabled},
		{name: "bool false", in: map[string]any{"async": false}, want: def},
		{name: "struct form", in: map[string]any{"timeout": "10s", "async": map[string]any{
			"enabled": true, "maxAttempts": 5, "backoff": "2s", "maxBackoff": "30s", "retryOn": []any{503, 408},
			"maxAge": "1h", "deadLetter": false, "maxInflight": 4, "maxBodyBytes": 4096}}, want: custom},
		{name: "partial struct keeps defaults", in: map[string]any{"async": map[string]any{"maxAttempts": 7}}, want: partial},
		{name: "bad duration", in: map[string]any{"async": map[string]any{"backoff": "soon"}}, err: `async.backoff "soon"`},
		{name: "bad timeout", in: map[string]any{"timeout": 30}, err: "timeout must be a duration string"},
		{name: "attempts out of range", in: map[string]any{"async": map[string]any{"maxAttempts": 0}}, err: "async.maxAttempts must be a whole number from 1 to 100"},
		{name: "fractional inflight", in: map[string]any{"async": map[string]any{"maxInflight": 1.5}}, err: "async.maxInflight"},
		{name: "bad status", in: map[string]any{"async": map[string]any{"retryOn": []any{700}}}, err: "700 is not an HTTP status code"},
		{name: "wrong kind", in: map[string]any{"async": "yes"}, err: "async must be a boolean or an object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in["name"] = "fn"
			fm, err := DecodeFunctionMeta(meta(t, tc.in))
			if err != nil {
				t.Fatalf("a bad async policy must not refuse the cluster: %v", err)
			}
			got := fm.Policy
			if tc.err != "" {
				if fm.PolicyErr == nil || !strings.Contains(fm.PolicyErr.Error(), tc.err) {
					t.Fatalf("PolicyErr %v, want one containing %q", fm.PolicyErr, tc.err)
				}
				tc.want = DefaultAsyncPolicy()
			} else if fm.PolicyErr != nil {
				t.Fatal(fm.PolicyErr)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("config (-want +got):\n%s", d)
			}
		})
	}
}
