package snapshot

import (
	"slices"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// TestShortNamePerNamespace pins a bug the transparent e2e test met: Services named "plain"
// in namespaces "default" and "transparent-e2e" both claimed the bare domain "plain" in
// route configuration "80", the first (default) won, and transparent-e2e's callers of
// http://plain/ matched no virtual host (passthrough: no retries, no metrics, and gRPC and
// WebSocket broke). Each namespace's sidecars must route the bare name to their own Service,
// and no route configuration may list a domain twice.
func TestShortNamePerNamespace(t *testing.T) {
	svc := func(ns, ip string) corev1.Service {
		return corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: ns},
			Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	}
	// A MeshRoute host "plain" in a third namespace (no Service there) claims the bare name
	// for that namespace only; before the fix it took it from both Services.
	mr := meshv1alpha1.MeshRoute{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "other"},
		Spec: meshv1alpha1.MeshRouteSpec{Hosts: []string{"plain"}, HTTP: []meshv1alpha1.HTTPRule{{
			Route: []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: "x", Port: 80}, Weight: 1}}}}}}
	res := Translate(&Input{Services: []corev1.Service{svc("default", "10.96.0.20"), svc("transparent-e2e", "10.96.0.21")}, MeshRoutes: []meshv1alpha1.MeshRoute{mr}})
	for _, ns := range []string{"default", "transparent-e2e", "other"} {
		rcs, _ := res.routeConfigurations(ns)
		var rc80 *routev3.RouteConfiguration
		for _, rc := range rcs {
			if rc.Name == "80" {
				rc80 = rc
			}
			seen := map[string]string{}
			for _, vh := range rc.VirtualHosts {
				for _, d := range vh.Domains {
					if w, dup := seen[d]; dup {
						t.Errorf("sidecar in %s: route configuration %s lists domain %q in %s and %s", ns, rc.Name, d, w, vh.Name)
					}
					seen[d] = vh.Name
				}
			}
		}
		if rc80 == nil {
			t.Fatalf("sidecar in %s: no route configuration 80", ns)
		}
		var got []string
		for _, vh := range rc80.VirtualHosts {
			if slices.Contains(vh.Domains, "plain") {
				got = append(got, vh.Name)
			}
		}
		want := "plain." + ns + ".svc.cluster.local:80"
		if ns == "other" {
			want = ""
		}
		switch {
		case want == "" && len(got) > 1:
			t.Errorf("sidecar in %s: bare name plain in %v", ns, got)
		case want != "" && (len(got) != 1 || got[0] != want):
			t.Errorf("sidecar in %s: bare name plain in virtual hosts %v, want only %s", ns, got, want)
		}
	}
}
