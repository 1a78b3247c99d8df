package v1alpha1_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// decodeList decodes a list the way the manager's client does (the scheme's JSON codec).
func decodeList(t *testing.T, raw string, into runtime.Object) {
	t.Helper()
	s := runtime.NewScheme()
	if err := meshv1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := runtime.DecodeInto(serializer.NewCodecFactory(s).UniversalDecoder(), []byte(raw), into); err != nil {
		t.Fatalf("one bad item failed the whole list: %v", err)
	}
}

// Regression test for issue 13: a duration that passed the old CRD pattern but overflows Go
// ("9999999999h") failed every MeshRoute list, so the manager's caches never synced.
func TestRouteListWithOverflowingDurationDecodes(t *testing.T) {
	const list = `{"apiVersion":"mesh.weft.dev/v1alpha1","kind":"MeshRouteList","items":[
	 {"metadata":{"name":"bad","namespace":"a"},"spec":{"hosts":["x"],"http":[{"timeout":"9999999999h","retries":{"attempts":1,"baseInterval":"9999999999h"},"route":[{"service":"x","weight":1}]}]}},
	 {"metadata":{"name":"good","namespace":"a"},"spec":{"hosts":["y"],"http":[{"timeout":"1m30s","route":[{"service":"y","weight":1}]}]}}]}`
	var l meshv1alpha1.MeshRouteList
	decodeList(t, list, &l)
	if len(l.Items) != 2 {
		t.Fatalf("got %d items, want 2", len(l.Items))
	}
	got := l.Items[0].UnreadableFields()
	want := []string{"spec.http[0].timeout: ", "spec.http[0].retries.baseInterval: "}
	if len(got) != len(want) {
		t.Fatalf("unreadable fields %q, want %d", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) || !strings.Contains(got[i], `"9999999999h"`) {
			t.Errorf("field %d: %q, want prefix %q naming the value", i, got[i], want[i])
		}
	}
	if f := l.Items[1].UnreadableFields(); len(f) != 0 || l.Items[1].Spec.HTTP[0].Timeout.Duration != 90*time.Second {
		t.Errorf("good route: unreadable %q, timeout %v", f, l.Items[1].Spec.HTTP[0].Timeout)
	}
	// Written back, the stored text is kept, so an update never turns it into "0s".
	out, err := json.Marshal(l.Items[0].Spec.HTTP[0].Timeout)
	if err != nil || string(out) != `"9999999999h"` {
		t.Errorf("marshal: %s, %v", out, err)
	}
}

// Regression test for issue 13: RedisProxy opTimeout overflowing Go failed every list.
func TestRedisProxyListWithOverflowingDurationDecodes(t *testing.T) {
	const list = `{"apiVersion":"mesh.weft.dev/v1alpha1","kind":"RedisProxyList","items":[
	 {"metadata":{"name":"bad","namespace":"a"},"spec":{"opTimeout":"9999999999h","servers":[{"name":"a","address":"a:6379"}]}}]}`
	var l meshv1alpha1.RedisProxyList
	decodeList(t, list, &l)
	if got := l.Items[0].UnreadableFields(); len(got) != 1 || !strings.HasPrefix(got[0], "spec.opTimeout: ") {
		t.Errorf("unreadable fields %q, want spec.opTimeout", got)
	}
}

// Regression test for issue 13: a MeshFunction whose schemaless template had a wrong type
// (containers: "echo") failed every MeshFunction list: no function got a Deployment, and a
// restarted manager never synced its caches.
func TestFunctionListWithWrongTemplateTypeDecodes(t *testing.T) {
	const list = `{"apiVersion":"mesh.weft.dev/v1alpha1","kind":"MeshFunctionList","items":[
	 {"metadata":{"name":"bad","namespace":"a"},"spec":{"template":{"spec":{"containers":"echo"}}}},
	 {"metadata":{"name":"good","namespace":"a"},"spec":{"template":{"metadata":{"labels":{"app":"g"}},"spec":{"containers":[{"name":"fn","image":"echo"}]}}}}]}`
	var l meshv1alpha1.MeshFunctionList
	decodeList(t, list, &l)
	bad, good := l.Items[0], l.Items[1]
	if got := bad.UnreadableFields(); len(got) != 1 || !strings.HasPrefix(got[0], "spec.template is not a pod template") {
		t.Errorf("unreadable fields %q, want spec.template", got)
	}
	if out, _ := json.Marshal(bad.Spec.Template); string(out) != `{"spec":{"containers":"echo"}}` {
		t.Errorf("the stored template is not written back unchanged: %s", out)
	}
	if f := good.UnreadableFields(); len(f) != 0 || good.Spec.Template.Spec.Containers[0].Image != "echo" || good.Spec.Template.Labels["app"] != "g" {
		t.Errorf("good function: unreadable %q, template %+v", f, good.Spec.Template)
	}
	cp := good.DeepCopy()
	cp.Spec.Template.Spec.Containers[0].Image = "changed"
	if good.Spec.Template.Spec.Containers[0].Image != "echo" {
		t.Error("DeepCopy shares the template's containers")
	}
}
