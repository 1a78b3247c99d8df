package snapshot

import (
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
)

// The async policy a MeshFunction sets reaches the sidecars' publisher and consumer intact:
// the function cluster's metadata decodes (with the sidecar's own decoder) to the spec.
func TestFunctionMetadataCarriesTheAsyncPolicy(t *testing.T) {
	fn := &meshv1alpha1.MeshFunction{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"}}
	fn.Spec.Timeout = &meshv1alpha1.Duration{Duration: 45 * time.Second}
	fn.Spec.Async = &meshv1alpha1.Async{
		Enabled: true, MaxAttempts: 5, MaxInflight: 7, MaxBodyBytes: 4096,
		Backoff: &meshv1alpha1.Duration{Duration: 2 * time.Second}, MaxBackoff: &meshv1alpha1.Duration{Duration: 20 * time.Second},
		MaxAge: &meshv1alpha1.Duration{Duration: time.Hour}, DeadLetter: ptr.To(false), RetryOn: []int32{429, 503},
	}
	md := functionCluster(fn).GetMetadata().GetFilterMetadata()[contract.FunctionMetadataKey]
	fm, err := config.DecodeFunctionMeta(md)
	if err != nil || fm.PolicyErr != nil {
		t.Fatalf("sidecar/config cannot decode the metadata: %v, %v", err, fm.PolicyErr)
	}
	got := fm.Policy
	if !got.Enabled || got.MaxAttempts != 5 || got.MaxInflight != 7 || got.MaxBodyBytes != 4096 ||
		got.Backoff != 2*time.Second || got.MaxBackoff != 20*time.Second || got.MaxAge != time.Hour ||
		got.DeadLetter || len(got.RetryOn) != 2 || got.RetryOn[0] != 429 || got.RetryOn[1] != 503 ||
		got.Timeout != 45*time.Second {
		t.Fatalf("decoded %+v, want the spec's policy and a 45s timeout", got)
	}

	fn.Spec.Async = nil
	fm, err = config.DecodeFunctionMeta(functionCluster(fn).GetMetadata().GetFilterMetadata()[contract.FunctionMetadataKey])
	if err != nil || fm.PolicyErr != nil || fm.Policy.Enabled {
		t.Fatalf("a function without spec.async decoded as %+v, %v; want async off", fm, err)
	}
}

// A function's own route retries, on another pod, the calls that never reached a pod (a
// scale-down's removed pod still in a caller's endpoints) and nothing else: the sidecar's
// decoder reads the policy back as connect-failure and refused-stream, 2 retries, previous
// hosts avoided.
func TestFunctionRouteRetriesOnlyWhatNeverReachedThePod(t *testing.T) {
	fn := &meshv1alpha1.MeshFunction{ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: "default", UID: "u1"}}
	b := (&translator{ix: newIndex(&Input{})}).meshFunction(fn)
	rc := &routev3.RouteConfiguration{Name: "80", VirtualHosts: []*routev3.VirtualHost{{
		Name: "hello", Domains: []string{"hello"}, Routes: b.routes}}}
	table, err := config.DecodeRouteConfig(rc)
	if err != nil {
		t.Fatalf("the sidecar refuses the function's route: %v", err)
	}
	got := table.VirtualHosts[0].Routes[0].Retry
	if got == nil || got.NumRetries != 2 || got.On != config.RetryConnectFailure|config.RetryRefusedStream || !got.PreviousHosts {
		t.Fatalf("retry policy %+v, want 2 retries on connect-failure and refused-stream only, on hosts not tried yet", got)
	}
}
