//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
)

// callAsync asks the caller pod to make n calls to target with "Prefer: respond-async" and a
// callback to the caller pod itself.
func callAsync(t *testing.T, target string, n int) (tally, string) {
	t.Helper()
	ps := pods(t, "app=caller")
	if len(ps) == 0 || ps[0].Status.PodIP == "" {
		t.Fatal("no caller pod with an IP")
	}
	ip := ps[0].Status.PodIP
	q := url.Values{"url": {target}, "n": {strconv.Itoa(n)}, "c": {"20"},
		"h": {"Prefer: respond-async", "X-Callback-Url: http://" + ip + ":8080/callback"}}
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + ip + ":8080/call?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out tally
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out, ip
}

type callbackCounts struct {
	ByStatus      map[string]int `json:"byStatus"`
	DistinctCalls int            `json:"distinctCalls"`
	// ByVersion counts callbacks by the echo reply's version: which revision ran the call.
	ByVersion map[string]int `json:"byVersion"`
}

func callbacksAt(ip string) (callbackCounts, error) {
	var c callbackCounts
	resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}).Get("http://" + ip + ":8080/callbacks")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	return c, json.NewDecoder(resp.Body).Decode(&c)
}

// 100 async calls through the caller's own sidecar answer 202 at once, are pulled by the
// function's sidecars and produce 100 callbacks; no gateway is involved.
func TestFunction5AsyncCallsProduceCallbacks(t *testing.T) {
	routed(t, "http://reviews:9080/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	eventually(t, 2*time.Minute, "async calls accepted", func() error {
		// The caller's sidecar must have the queue from xDS; until then it answers 503.
		got, _ := callAsync(t, "http://hello/", 1)
		if got.ByStatus["202"] != 1 {
			return fmt.Errorf("probe call: %+v", got)
		}
		return nil
	})
	got, ip := callAsync(t, "http://hello/", 100)
	if got.ByStatus["202"] != 100 {
		t.Fatalf("100 async calls: %+v, want all answered 202", got)
	}
	eventually(t, 3*time.Minute, "101 callbacks with status 200", func() error {
		c, err := callbacksAt(ip)
		if err != nil {
			return err
		}
		if c.ByStatus["200"] < 101 || c.DistinctCalls < 101 {
			return fmt.Errorf("callbacks so far: %+v", c)
		}
		return nil
	})
}

// A function that always fails is retried maxAttempts times and its calls end in the
// dead-letter stream, each with a callback reporting the failure. It starts at zero: the
// queued calls alone scale it up.
func TestFunction6FailingAsyncCallsEndInDeadLetter(t *testing.T) {
	manifest := `apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: broken, namespace: default}
spec:
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/flaky:latest
        env: [{name: FAIL_RATE, value: "1"}]
  scale: {initial: 0, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  async: {maxAttempts: 2, backoff: 100ms, maxBackoff: 200ms}
`
	f := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	defer kubectl("delete", "-f", f, "--wait=false")
	var ip string
	eventually(t, 2*time.Minute, "async calls to broken accepted", func() error {
		var got tally
		got, ip = callAsync(t, "http://broken/", 5)
		if got.ByStatus["202"] != 5 {
			return fmt.Errorf("5 async calls: %+v", got)
		}
		return nil
	})
	eventually(t, 3*time.Minute, "5 failure callbacks", func() error {
		c, err := callbacksAt(ip)
		if err != nil {
			return err
		}
		if c.ByStatus["500"] < 5 {
			return fmt.Errorf("callbacks so far: %+v", c)
		}
		return nil
	})

	// Read the dead-letter stream as the manager (its user's password derives from the
	// Secret's key); the key alone, as the shared token it once was, is refused.
	sec, err := cs.CoreV1().Secrets("weft-system").Get(context.Background(), "weft-nats-token", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// 10.244.0.1 is the local mesh's bridge, where the manager's NATS listens.
	const natsURL = "nats://10.244.0.1:4222"
	tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
	if nc, _, err := queue.Connect(tctx, queue.ClientOptions{URL: natsURL, Token: string(sec.Data["token"]), Name: "e2e"}); err == nil {
		nc.Close()
		t.Error("NATS accepted the Secret's key as a shared token")
	}
	tcancel()
	// The namespace's callers' identity (what every non-function sidecar of default gets)
	// may not read the dead letters.
	callers := queue.NewCredentials(string(sec.Data["token"])).Client(queue.NamespaceIdentity("default"))
	callers.URL, callers.Name = natsURL, "e2e-callers"
	nc, cjs, err := queue.Connect(context.Background(), callers)
	if err != nil {
		t.Fatalf("connecting as namespace default's callers: %v", err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 3*time.Second)
	if _, err := cjs.Stream(rctx, "WEFT_DEAD"); err == nil {
		t.Error("namespace default's callers read stream WEFT_DEAD")
	}
	rcancel()
	nc.Close()
	admin := queue.NewCredentials(string(sec.Data["token"])).Admin()
	admin.URL, admin.Name = natsURL, "e2e"
	_, js, err := queue.Connect(context.Background(), admin)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "5 dead letters for broken", func() error {
		st, err := js.Stream(context.Background(), "WEFT_DEAD")
		if err != nil {
			return err
		}
		info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(contract.DeadSubject("default", "broken")))
		if err != nil {
			return err
		}
		if n := info.State.Subjects[contract.DeadSubject("default", "broken")]; n < 5 {
			return fmt.Errorf("%d dead letters", n)
		}
		return nil
	})
}
