package snapshot

import (
	"fmt"
	"path/filepath"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/contract"
)

// endpointMutations are the changes the equivalence test applies to one Service's slices:
// all slices deleted, every endpoint turned serving-but-terminating, one endpoint added, and
// a Service that had no slices getting one.
func endpointMutations(in *Input, svc string) map[string]EndpointChange {
	var cur []discoveryv1.EndpointSlice
	for _, es := range in.EndpointSlices {
		if nsName(es.Namespace, es.Labels[discoveryv1.LabelServiceName]) == svc {
			cur = append(cur, *es.DeepCopy())
		}
	}
	ns, name := splitNS(svc)
	out := map[string]EndpointChange{"deleted": {svc: nil}}
	drain := make([]discoveryv1.EndpointSlice, len(cur))
	for i := range cur {
		drain[i] = *cur[i].DeepCopy()
		for j := range drain[i].Endpoints {
			drain[i].Endpoints[j].Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
		}
	}
	out["draining"] = EndpointChange{svc: drain}
	added := make([]discoveryv1.EndpointSlice, len(cur))
	for i := range cur {
		added[i] = *cur[i].DeepCopy()
	}
	extra := discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-eds-test", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.250.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: name + "-new"}, Hostname: ptr.To(name + "-new")}},
	}
	// The new slice copies the ports of an existing one (or serves every port a test uses).
	if len(cur) > 0 {
		extra.Ports = cur[0].Ports
	} else {
		for _, p := range []int32{80, 8080, 9080, 6379, contract.InboundPort} {
			extra.Ports = append(extra.Ports, discoveryv1.EndpointPort{Port: ptr.To(p)})
		}
	}
	out["added"] = EndpointChange{svc: append(added, extra)}
	return out
}

func splitNS(k string) (string, string) {
	for i := range k {
		if k[i] == '/' {
			return k[:i], k[i+1:]
		}
	}
	return "", k
}

// serviceKeys are every Service, MeshFunction and slice owner of in.
func serviceKeys(in *Input) []string {
	set := map[string]bool{}
	for _, s := range in.Services {
		set[nsName(s.Namespace, s.Name)] = true
	}
	for _, f := range in.MeshFunctions {
		set[nsName(f.Namespace, f.Name)] = true
	}
	for _, es := range in.EndpointSlices {
		if n := es.Labels[discoveryv1.LabelServiceName]; n != "" {
			set[nsName(es.Namespace, n)] = true
		}
	}
	return sortedKeys(set)
}

// allViews are the golden views plus a plain view of every namespace.
func allViews(in *Input, views []View) []View {
	out := append([]View(nil), views...)
	seen := map[string]bool{}
	for _, k := range serviceKeys(in) {
		ns, _ := splitNS(k)
		if !seen[ns] {
			seen[ns] = true
			out = append(out, View{Namespace: ns})
		}
	}
	return out
}

// sameSnapshots fails unless got and want give every view the same resources and versions.
func sameSnapshots(t *testing.T, what string, got, want *Result, views []View) {
	t.Helper()
	for _, v := range views {
		gs, gerr := got.Snapshot(v)
		ws, werr := want.Snapshot(v)
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("%s, view %+v: fast path error %v, Translate error %v", what, v, gerr, werr)
		}
		if gerr != nil {
			continue
		}
		for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
			if g, w := gs.GetVersion(typ), ws.GetVersion(typ); g != w {
				t.Errorf("%s, view %+v: %s version %s, Translate gives %s", what, v, typ, g, w)
			}
			if d := cmp.Diff(ws.GetResources(typ), gs.GetResources(typ), protocmp.Transform()); d != "" {
				t.Errorf("%s, view %+v: %s resources differ from Translate (-translate +fast):\n%s", what, v, typ, d)
			}
		}
		er, err := got.EndpointResources(v)
		if err != nil {
			t.Fatalf("%s, view %+v: EndpointResources: %v", what, v, err)
		}
		if er.Version != gs.GetVersion(resourcev3.EndpointType) || len(er.Items) != len(gs.GetResources(resourcev3.EndpointType)) {
			t.Errorf("%s, view %+v: EndpointResources version %s (%d items), Snapshot %s (%d items)", what, v,
				er.Version, len(er.Items), gs.GetVersion(resourcev3.EndpointType), len(gs.GetResources(resourcev3.EndpointType)))
		}
		for name, m := range gs.GetResources(resourcev3.EndpointType) {
			if !proto.Equal(er.Items[name].Resource, m) {
				t.Errorf("%s, view %+v: EndpointResources has %v for %s, Snapshot %v", what, v, er.Items[name].Resource, name, m)
			}
		}
	}
	if d := cmp.Diff(want.Status, got.Status); d != "" {
		t.Errorf("%s: status differs from Translate:\n%s", what, d)
	}
	for _, rp := range want.Redis {
		gt, gr := got.PoolServers(rp.Key.Namespace, rp.Key.Name)
		wt, wr := want.PoolServers(rp.Key.Namespace, rp.Key.Name)
		if gt != wt || gr != wr {
			t.Errorf("%s: pool %s servers %d/%d, Translate %d/%d", what, rp.Key, gr, gt, wr, wt)
		}
	}
}

// TestUpdateEndpointsMatchesTranslate pins the fast path's contract on every golden input:
// for each Service and each kind of slice change, UpdateEndpoints gives, for every view, the
// resources and versions Translate gives on the changed input — or refuses. Changes of two
// Services in a row (a derived Result derived again) are checked too. The fast path must be
// taken for every Service that is not headless (a refusal there would be a silent slowdown).
func TestUpdateEndpointsMatchesTranslate(t *testing.T) {
	files, err := filepath.Glob("testdata/*.in.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	taken, refused := 0, 0
	for _, f := range files {
		in, views := readInput(t, f)
		views = allViews(in, views)
		base := Translate(in)
		headless := map[string]bool{}
		for _, s := range in.Services {
			if s.Spec.Type != corev1.ServiceTypeExternalName && s.Spec.ClusterIP == corev1.ClusterIPNone {
				headless[nsName(s.Namespace, s.Name)] = true
			}
		}
		keys := serviceKeys(in)
		for ki, svc := range keys {
			muts := endpointMutations(in, svc)
			names := sortedKeys(muts)
			for _, m := range names {
				ch := muts[m]
				what := fmt.Sprintf("%s: %s %s", filepath.Base(f), svc, m)
				for _, v := range views {
					_, _ = base.EndpointResources(v) // so derived Results build theirs from base's
				}
				got, ok := base.UpdateEndpoints(ch)
				if !ok {
					refused++
					if !headless[svc] && base.eds.complete {
						// Only a redis pool whose endpoints stop validating may refuse.
						if len(base.eds.pools[svc]) == 0 {
							t.Errorf("%s: fast path refused", what)
						}
					}
					continue
				}
				if headless[svc] {
					t.Errorf("%s: fast path taken for a headless Service, whose endpoints are in the listener's chains", what)
				}
				taken++
				checkChangedEndpoints(t, what, base, got, views)
				next := in.WithEndpoints(ch)
				want := Translate(next)
				sameSnapshots(t, what, got, want, views)
				for _, v := range views {
					bs, err1 := base.Snapshot(v)
					gs, err2 := got.Snapshot(v)
					if err1 != nil || err2 != nil {
						continue
					}
					for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
						if bs.GetVersion(typ) != gs.GetVersion(typ) {
							t.Errorf("%s, view %+v: %s version changed on an endpoint-only change", what, v, typ)
						}
					}
				}
				// And once more on the derived Result, for another Service.
				other := keys[(ki+1)%len(keys)]
				ch2 := endpointMutations(next, other)["added"]
				got2, ok := got.UpdateEndpoints(ch2)
				if !ok {
					continue
				}
				sameSnapshots(t, what+" then "+other+" added", got2, Translate(next.WithEndpoints(ch2)), views)
				if !got2.SameButEndpoints(base) {
					t.Errorf("%s: a derived Result is not SameButEndpoints as its origin", what)
				}
			}
		}
	}
	if taken == 0 {
		t.Fatal("the fast path was never taken")
	}
	t.Logf("fast path taken %d times, refused %d", taken, refused)
}

// TestUpdateEndpointsKeepsDraining: a function going to zero keeps its endpoints DRAINING
// through endpoint-only changes (a pod added while the controller announces zero must not
// be sent HEALTHY, or callers would send to it while the hand-off removes it).
func TestUpdateEndpointsKeepsDraining(t *testing.T) {
	in, _ := readInput(t, "testdata/function-going-to-zero.in.yaml")
	base := Translate(in)
	var fn string
	for _, f := range in.MeshFunctions {
		if goingToZero(&f) {
			fn = nsName(f.Namespace, f.Name)
		}
	}
	if fn == "" {
		t.Fatal("the golden input has no function going to zero")
	}
	got, ok := base.UpdateEndpoints(endpointMutations(in, fn)["added"])
	if !ok {
		t.Fatal("fast path refused")
	}
	ns, name := splitNS(fn)
	cn := contract.FunctionClusterName(ns, name)
	n := 0
	for _, cla := range got.Endpoints {
		if cla.GetClusterName() != cn {
			continue
		}
		for _, loc := range cla.GetEndpoints() {
			for _, e := range loc.GetLbEndpoints() {
				n++
				if e.GetHealthStatus().String() != "DRAINING" {
					t.Errorf("endpoint %v of a function going to zero is %v", e.GetEndpoint().GetAddress(), e.GetHealthStatus())
				}
			}
		}
	}
	if n < 2 || got.FunctionServing(ns, name) {
		t.Fatalf("want the new endpoint added, draining, and the function not serving; got %d endpoints, serving %v", n, got.FunctionServing(ns, name))
	}
}

// TestUpdateEndpointsRefuses: changes that reach beyond EDS take Translate.
func TestUpdateEndpointsRefuses(t *testing.T) {
	in := &Input{Services: []corev1.Service{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "tcp", Port: 5432}}}}}}
	base := Translate(in)
	if _, ok := base.UpdateEndpoints(endpointMutations(in, "default/db")["added"]); ok {
		t.Error("fast path taken for a headless Service: its endpoint addresses are in the outbound listener's chains")
	}
	if _, ok := (&Result{}).UpdateEndpoints(EndpointChange{"default/x": nil}); ok {
		t.Error("fast path taken on a Result that Translate did not make")
	}
	// A Service nothing reads: nothing changes, the Result is the same.
	if got, ok := base.UpdateEndpoints(EndpointChange{"default/nobody": nil}); !ok || got != base {
		t.Errorf("a change nobody reads: got %p ok %v, want the same Result", got, ok)
	}
}

// TestServiceOfCluster pins the cluster name forms the plan reads a Service from.
func TestServiceOfCluster(t *testing.T) {
	ix := newIndex(&Input{})
	for name, want := range map[string]string{
		contract.FunctionClusterName("ns", "fn"):                        "ns/fn",
		contract.ServiceClusterName(80, "v1", "svc", "ns", "rns", "rt"): "ns/svc",
		contract.DefaultServiceClusterName(80, "svc", "ns"):             "ns/svc",
		"outbound|80||svc.ns.example.com":                               "",
		"something|else":                                                "",
		contract.RedisName("ns", "missing"):                             "",
	} {
		if got := ix.serviceOfCluster(name); got != want {
			t.Errorf("serviceOfCluster(%q) = %q, want %q", name, got, want)
		}
	}
}

// checkChangedEndpoints asserts that ChangedEndpoints names every assignment of every view
// that got does not share, as the very same message, with base (the xds cache derives the
// next EDS group from those names alone).
func checkChangedEndpoints(t *testing.T, what string, base, got *Result, views []View) {
	t.Helper()
	if got == base {
		return
	}
	names, ok := got.ChangedEndpoints(base)
	if !ok {
		t.Errorf("%s: ChangedEndpoints not known for a derived Result", what)
		return
	}
	if _, ok := got.ChangedEndpoints(Translate(&Input{})); ok {
		t.Errorf("%s: ChangedEndpoints known from an unrelated Result", what)
	}
	named := map[string]bool{}
	for _, n := range names {
		named[n] = true
	}
	for _, v := range views {
		be, err1 := base.EndpointResources(v)
		ge, err2 := got.EndpointResources(v)
		if err1 != nil || err2 != nil {
			continue
		}
		if len(be.Items) != len(ge.Items) {
			t.Errorf("%s, view %+v: %d assignments, base has %d", what, v, len(ge.Items), len(be.Items))
		}
		for n, r := range ge.Items {
			if b, ok := be.Items[n]; (!ok || b.Resource != r.Resource) && !named[n] {
				t.Errorf("%s, view %+v: assignment %s changed but ChangedEndpoints does not name it", what, v, n)
			}
		}
	}
}
