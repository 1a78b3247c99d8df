package snapshot

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// Builders for scale inputs.

func benchService(ns, name string, port int32) corev1.Service {
	return corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(8080)}}}}
}

func benchSlice(ns, svc string, port int32, pods int, base int) discoveryv1.EndpointSlice {
	es := discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port)}},
	}
	for i := 0; i < pods; i++ {
		n := base*pods + i
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: fmt.Sprintf("%s-%d", svc, i)},
		})
	}
	return es
}

func benchMeshRoute(ns, name, svc string, created time.Time) meshv1alpha1.MeshRoute {
	return meshv1alpha1.MeshRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1, CreationTimestamp: metav1.NewTime(created)},
		Spec: meshv1alpha1.MeshRouteSpec{
			Hosts: []string{name},
			HTTP: []meshv1alpha1.HTTPRule{
				{Name: "api", Match: []meshv1alpha1.HTTPMatch{{Path: &meshv1alpha1.PathMatch{Type: meshv1alpha1.MatchPrefix, Value: "/api"}}},
					Route:   []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: svc, Port: 80}, Weight: 1}},
					Retries: &meshv1alpha1.HTTPRetry{Attempts: 2}, Timeout: &meshv1alpha1.Duration{Duration: time.Second}},
				{Route: []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: svc, Port: 80}, Weight: 1}}},
			},
		},
	}
}

func benchMeshFunction(ns, name string) meshv1alpha1.MeshFunction {
	return meshv1alpha1.MeshFunction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec: meshv1alpha1.MeshFunctionSpec{Port: 8080}}
}

// scaleInput is 10,000 MeshRoutes (each with its own Service of 3 endpoints) and 1,000
// MeshFunctions (each with 2 pods) over 100 namespaces.
func scaleInput() *Input {
	in := &Input{}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 10_000; i++ {
		ns := fmt.Sprintf("ns-%d", i%100)
		svc := fmt.Sprintf("svc-%d", i)
		in.Services = append(in.Services, benchService(ns, svc, 80))
		in.EndpointSlices = append(in.EndpointSlices, benchSlice(ns, svc, 8080, 3, i))
		in.MeshRoutes = append(in.MeshRoutes, benchMeshRoute(ns, fmt.Sprintf("route-%d", i), svc, t0.Add(time.Duration(i)*time.Second)))
	}
	for i := 0; i < 1_000; i++ {
		ns := fmt.Sprintf("ns-%d", i%100)
		fn := fmt.Sprintf("fn-%d", i)
		in.MeshFunctions = append(in.MeshFunctions, benchMeshFunction(ns, fn))
		in.EndpointSlices = append(in.EndpointSlices, benchSlice(ns, fn, contract.InboundPort, 2, 20_000+i))
	}
	return in
}

// BenchmarkTranslate measures Translate plus one view's snapshot (hashing, validation,
// consistency) for 10,000 MeshRoutes and 1,000 MeshFunctions.
func BenchmarkTranslate(b *testing.B) {
	in := scaleInput()
	v := View{Namespace: "ns-1", AppPort: 8080}
	b.ReportAllocs()
	for b.Loop() {
		r := Translate(in)
		if _, err := r.Snapshot(v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSnapshotPerView measures the extra cost of one more view (another namespace)
// once a Result exists: what each new sidecar view costs on every rebuild.
func BenchmarkSnapshotPerView(b *testing.B) {
	r := Translate(scaleInput())
	if _, err := r.Snapshot(View{Namespace: "ns-1"}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := r.Snapshot(View{Namespace: fmt.Sprintf("ns-%d", i%100), AppPort: uint32(1000 + i%50000)}); err != nil {
			b.Fatal(err)
		}
	}
}
