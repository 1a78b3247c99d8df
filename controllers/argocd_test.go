package controllers

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// argoHealthScript is the health check Weft ships for Argo CD.
var argoHealthScript = filepath.Join("..", "config", "argocd", "health.lua")

// argoHealth runs the Argo CD health script on obj as Argo CD does (github.com/yuin/gopher-lua,
// the object handed over as a table decoded from its JSON; util/lua in argoproj/argo-cd) and
// returns hs.status and hs.message.
func argoHealth(t fataler, obj map[string]any) (string, string) {
	t.Helper()
	script, err := os.ReadFile(argoHealthScript)
	if err != nil {
		t.Fatal(err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(string(script)); err != nil {
		t.Fatalf("health.lua: %v", err)
	}
	hs, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("health.lua returned %s, want a table", L.Get(-1).Type())
	}
	return lua.LVAsString(hs.RawGetString("status")), lua.LVAsString(hs.RawGetString("message"))
}

// fataler is what argoHealth needs of testing.TB and GinkgoT().
type fataler interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// toLua converts a JSON-decoded value into Lua values the way Argo CD's decodeValue does:
// objects and arrays become tables, numbers LNumber.
func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(x)
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case nil:
		return lua.LNil
	}
	b, _ := json.Marshal(v)
	var back any
	_ = json.Unmarshal(b, &back)
	return toLua(L, back)
}

// TestArgoCDPatchCarriesHealthLua keeps the argocd-cm patch in step with health.lua.
func TestArgoCDPatchCarriesHealthLua(t *testing.T) {
	script, err := os.ReadFile(argoHealthScript)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("..", "config", "argocd", "argocd-cm-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"MeshRoute", "MeshFunction", "RedisProxy", "MeshPolicy"} {
		key := "resource.customizations.health.mesh.weft.dev_" + kind
		if got := cm.Data[key]; strings.TrimSpace(got) != strings.TrimSpace(string(script)) {
			t.Errorf("%s differs from health.lua (regenerate the patch)", key)
		}
	}
}

// TestArgoCDHealthCaptured runs kstatus and the health script over the objects captured from envtest in
// every state (testdata/status/*.yaml, written by the kstatus spec with -update-status).
func TestArgoCDHealthCaptured(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "status", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no captured statuses in testdata/status: run the envtest suite with -update-status")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var c capturedStatus
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// Numbers decode as int64 where integral, as from the API server (kstatus
			// insists on int64 generations).
			js, err := yaml.YAMLToJSON(raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := utiljson.Unmarshal(js, &c); err != nil {
				t.Fatal(err)
			}
			res, err := kstatus.Compute(&unstructured.Unstructured{Object: c.Object})
			if err != nil || string(res.Status) != c.KStatus {
				t.Errorf("kstatus = %v (%v), want %s", res, err, c.KStatus)
			}
			status, msg := argoHealth(t, c.Object)
			if status != c.ArgoCD {
				t.Errorf("Argo CD health = %s (%s), want %s", status, msg, c.ArgoCD)
			}
			if !strings.Contains(msg, c.ArgoCDMessage) {
				t.Errorf("Argo CD message %q does not contain %q", msg, c.ArgoCDMessage)
			}
		})
	}
}

// capturedStatus is one live object from envtest with what kstatus and Argo CD must say.
type capturedStatus struct {
	// KStatus is sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute's status.
	KStatus string `json:"kstatus"`
	// ArgoCD is the health status health.lua must return, ArgoCDMessage a part of its message.
	ArgoCD        string         `json:"argocd"`
	ArgoCDMessage string         `json:"argocdMessage"`
	Object        map[string]any `json:"object"`
}
