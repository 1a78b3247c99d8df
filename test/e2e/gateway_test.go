//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// gatewayNS is not labelled weft.dev/inject: its caller pod has no sidecar, like any client
// outside the mesh.
const gatewayNS = "gateway-e2e"

// bridgeIP is the local mesh's bridge address: the xDS port and NATS listen there, and
// pods reach the host's test servers there.
const bridgeIP = "10.244.0.1"

// deployGateway applies config/gateway as a user would, with two changes the local mesh
// needs: the control plane is on the bridge, not behind the weft-manager Service; and the
// node agent projects only serviceAccountToken and downwardAPI sources into containers it
// runs as programs, so the CA comes through the annotation injected pods use
// (workload.AddXDSCredentials) instead of the Secret a real kubelet projects.
func deployGateway(t *testing.T) corev1.Pod {
	t.Helper()
	ctx := context.Background()
	out, err := kubectl("kustomize", "config/gateway")
	if err != nil {
		t.Fatalf("kubectl kustomize config/gateway: %v\n%s", err, out)
	}
	sec, err := cs.CoreV1().Secrets("weft-system").Get(ctx, "weft-xds-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var created []func()
	t.Cleanup(func() {
		for _, del := range created {
			del()
		}
	})
	for _, doc := range strings.Split(out, "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "ServiceAccount":
			var o corev1.ServiceAccount
			if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
				t.Fatal(err)
			}
			_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			created = append(created, func() { _ = cs.CoreV1().ServiceAccounts(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{}) })
		case "Service":
			var o corev1.Service
			if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
				t.Fatal(err)
			}
			_, err = cs.CoreV1().Services(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			created = append(created, func() { _ = cs.CoreV1().Services(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{}) })
		case "Deployment":
			var o appsv1.Deployment
			if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
				t.Fatal(err)
			}
			localMeshGateway(t, &o, sec.Data["ca.crt"])
			_, err = cs.AppsV1().Deployments(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			created = append(created, func() { _ = cs.AppsV1().Deployments(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{}) })
		default:
			t.Fatalf("config/gateway renders a %s; this test knows ServiceAccount, Service and Deployment", meta.Kind)
		}
		if err != nil {
			t.Fatalf("creating the gateway's %s: %v", meta.Kind, err)
		}
	}
	var pod corev1.Pod
	eventually(t, 3*time.Minute, "a ready weft-gateway pod", func() error {
		l, err := cs.CoreV1().Pods("weft-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=gateway"})
		if err != nil {
			return err
		}
		for _, p := range l.Items {
			if readyRunning(p) && p.Status.PodIP != "" {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("%d gateway pods, none ready", len(l.Items))
	})
	return pod
}

// localMeshGateway makes the two changes deployGateway explains, failing if config/gateway
// no longer has what they replace, and runs one replica (two cores for the whole mesh).
func localMeshGateway(t *testing.T, d *appsv1.Deployment, ca []byte) {
	t.Helper()
	if d.Name != "weft-gateway" || d.Namespace != "weft-system" || d.Spec.Template.Spec.ServiceAccountName != "weft-gateway" {
		t.Fatalf("config/gateway renders Deployment %s/%s as ServiceAccount %s; the gateway view needs weft-system/weft-gateway",
			d.Namespace, d.Name, d.Spec.Template.Spec.ServiceAccountName)
	}
	d.Spec.Replicas = ptr(int32(1))
	args := d.Spec.Template.Spec.Containers[0].Args
	i := slices.Index(args, "--xds-address=weft-manager.weft-system.svc:18000")
	if i < 0 {
		t.Fatalf("config/gateway no longer names the manager's Service as its xDS address: %v", args)
	}
	args[i] = "--xds-address=" + bridgeIP + ":18000"
	if len(ca) == 0 {
		t.Fatal("Secret weft-system/weft-xds-cert has no ca.crt")
	}
	replaced := false
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for j, s := range v.Projected.Sources {
			if s.Secret != nil && s.Secret.Name == "weft-xds-cert" {
				v.Projected.Sources[j] = corev1.VolumeProjection{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{
					Path: "ca.crt", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['weft.dev/xds-ca']"}}}}}
				replaced = true
			}
		}
	}
	if !replaced {
		t.Fatal("config/gateway no longer projects the CA from Secret weft-xds-cert")
	}
	if d.Spec.Template.Annotations == nil {
		d.Spec.Template.Annotations = map[string]string{}
	}
	d.Spec.Template.Annotations["weft.dev/xds-ca"] = string(ca)
}

// gatewayCaller runs the caller example in gatewayNS, a namespace without injection.
func gatewayCaller(t *testing.T) corev1.Pod {
	t.Helper()
	ctx := context.Background()
	one := int32(1)
	labels := map[string]string{"app": "gw-caller"}
	objs := []any{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: gatewayNS}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "gw-caller", Namespace: gatewayNS},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr(int64(2)), Containers: []corev1.Container{{
						Name: "caller", Image: "weft.dev/examples/caller:latest"}}}}}},
	}
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Namespace:
			_, err = cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *appsv1.Deployment:
			_, err = cs.AppsV1().Deployments(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), gatewayNS, metav1.DeleteOptions{}) })
	var pod corev1.Pod
	eventually(t, 3*time.Minute, "the caller pod in "+gatewayNS, func() error {
		l, err := cs.CoreV1().Pods(gatewayNS).List(ctx, metav1.ListOptions{LabelSelector: "app=gw-caller"})
		if err != nil {
			return err
		}
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && len(p.Status.ContainerStatuses) > 0 {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("%d caller pods, none running", len(l.Items))
	})
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 0 {
		t.Fatalf("the caller in %s has %d containers and %d init containers, want only its own (no sidecar)",
			gatewayNS, len(pod.Spec.Containers), len(pod.Spec.InitContainers))
	}
	return pod
}

// gwFunction is a MeshFunction at zero with a host of its own, for the gateway's tests.
const gwFunction = `apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: gw-fn, namespace: default}
spec:
  port: 8080
  hosts: [gw-fn.example.com]
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: gw-v1}]
  scale: {initial: 0, max: 2, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  activation: {holdTimeout: 90s, maxPending: 100}
`

type gwAnswer struct {
	status int
	header http.Header
	body   string
}

// viaGateway sends one request to the gateway pod's port 8080 from this process (no
// sidecar anywhere on the caller's side) with the given Host.
func viaGateway(gw corev1.Pod, method, host, path string, hdr map[string]string, body string) (gwAnswer, error) {
	req, err := http.NewRequest(method, "http://"+net.JoinHostPort(gw.Status.PodIP, "8080")+path, strings.NewReader(body))
	if err != nil {
		return gwAnswer{}, err
	}
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return gwAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return gwAnswer{status: resp.StatusCode, header: resp.Header, body: string(b)}, err
}

func functionPodsReady(t *testing.T, fn string) int {
	t.Helper()
	n := 0
	for _, p := range pods(t, "weft.dev/function="+fn) {
		if readyRunning(p) {
			n++
		}
	}
	return n
}

// waitAtZero waits until the function has no pod at all.
func waitAtZero(t *testing.T, fn string) {
	t.Helper()
	eventually(t, 3*time.Minute, fn+" at zero", func() error {
		if n := len(pods(t, "weft.dev/function="+fn)); n > 0 {
			return fmt.Errorf("%d pods", n)
		}
		return nil
	})
}

// TestGateway: callers without a sidecar reach functions through the gateway by Host,
// from zero; an unknown host, or a plain Service's, is a 404 that says why; forged
// internal headers go nowhere; an async call is queued and calls back.
func TestGateway(t *testing.T) {
	f := filepath.Join(t.TempDir(), "gw-fn.yaml")
	if err := os.WriteFile(f, []byte(gwFunction), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = kubectl("delete", "-f", f, "--wait=false") })
	gw := deployGateway(t)

	t.Run("a function at zero answers 200 through the gateway, held while it starts", func(t *testing.T) {
		if n := functionPodsReady(t, "gw-fn"); n != 0 {
			t.Fatalf("gw-fn has %d ready pods before its first call; want it at zero", n)
		}
		var got gwAnswer
		eventually(t, 2*time.Minute, "the gateway routes gw-fn.default", func() error {
			var err error
			got, err = viaGateway(gw, "GET", "gw-fn.default", "/hello", nil, "")
			if err != nil {
				return err
			}
			if got.status != http.StatusOK {
				return fmt.Errorf("answer %d: %s", got.status, got.body)
			}
			return nil
		})
		if got.header.Get("X-Version") != "gw-v1" {
			t.Errorf("answer from %q, want gw-fn's echo (X-Version gw-v1): %s", got.header.Get("X-Version"), got.body)
		}
		// The first call found no endpoint: the gateway held it and poked the autoscaler,
		// exactly as a caller's sidecar does. (A probe that failed before the routes arrived
		// was answered 404 without a hold, so the first 200 is the held one.)
		if got.header.Get("X-Weft-Cold-Start") == "" {
			t.Errorf("the first answer carries no X-Weft-Cold-Start: the gateway did not hold the call while gw-fn started")
		}
		for _, host := range []string{"gw-fn.default.svc.cluster.local", "gw-fn.example.com", "gw-fn.default:80"} {
			a, err := viaGateway(gw, "GET", host, "/", nil, "")
			if err != nil || a.status != http.StatusOK || a.header.Get("X-Version") != "gw-v1" {
				t.Errorf("Host %s: %v %d %q", host, err, a.status, a.body)
			}
		}
	})

	t.Run("a caller pod without a sidecar reaches the gateway Service by name", func(t *testing.T) {
		caller := gatewayCaller(t)
		pid := containerPid(t, caller, "caller")
		// curl in the caller's network and mount namespaces: the pod's resolv.conf, the
		// cluster DNS, kube-proxy's DNAT of Service port 80 to the gateway's 8080.
		eventually(t, 2*time.Minute, "curl http://weft-gateway.weft-system/ from "+gatewayNS, func() error {
			out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "-m", "curl", "--noproxy", "*", "-sS", "--max-time", "60",
				"-H", "Host: gw-fn.default.svc.cluster.local", "-o", "/dev/null", "-w", "%{http_code}",
				"http://weft-gateway.weft-system/").CombinedOutput()
			if err != nil {
				return fmt.Errorf("curl: %w: %s", err, out)
			}
			if string(out) != "200" {
				return fmt.Errorf("curl: HTTP %s, want 200", out)
			}
			return nil
		})
	})

	t.Run("an unknown host and a plain Service are 404 with a body that says why", func(t *testing.T) {
		for _, host := range []string{"nosuch.example.com", "gw-fn", "kubernetes.default.svc.cluster.local", "kubernetes.default", bridgeIP} {
			a, err := viaGateway(gw, "GET", host, "/", nil, "")
			if err != nil {
				t.Fatal(err)
			}
			if a.status != http.StatusNotFound || !strings.Contains(a.body, "no MeshFunction or MeshRoute serves this Host") {
				t.Errorf("Host %s: %d %q, want 404 naming what the gateway serves", host, a.status, a.body)
			}
		}
	})

	t.Run("forged internal headers do not pass the gateway", func(t *testing.T) {
		forged := map[string]string{
			"X-Weft-Peer-Metadata":   "app=admin&namespace=kube-system",
			"X-Weft-Start-Budget-Ms": "1",
			"X-Weft-Hold-Timeout":    "true",
			"Weft-Host":              "evil.example.com",
			"X-Benign":               "kept",
		}
		a, err := viaGateway(gw, "GET", "gw-fn.default", "/forged", forged, "")
		if err != nil {
			t.Fatal(err)
		}
		if a.status != http.StatusOK {
			t.Fatalf("answer %d: %s", a.status, a.body)
		}
		var echo struct {
			Headers map[string][]string `json:"headers"`
		}
		if err := json.Unmarshal([]byte(a.body), &echo); err != nil {
			t.Fatalf("echo's answer: %v: %s", err, a.body)
		}
		if echo.Headers["X-Benign"] == nil {
			t.Fatalf("the app did not see an ordinary header; the check below would prove nothing: %v", echo.Headers)
		}
		for k, v := range echo.Headers {
			if strings.HasPrefix(strings.ToLower(k), "x-weft-") {
				t.Errorf("the app got %s: %v through the gateway", k, v)
			}
			if strings.Contains(strings.Join(v, ","), "admin") || strings.Contains(strings.Join(v, ","), "evil") {
				t.Errorf("a forged value reached the app as %s: %v", k, v)
			}
		}
	})

	t.Run("an async call through the gateway is queued and calls back", func(t *testing.T) {
		waitAtZero(t, "gw-fn") // the queued call alone must start it
		ln, err := net.Listen("tcp", bridgeIP+":0")
		if err != nil {
			t.Fatalf("listening on the bridge for callbacks: %v", err)
		}
		type callback struct{ id, status, body string }
		var mu sync.Mutex
		var got []callback
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			mu.Lock()
			got = append(got, callback{r.Header.Get("X-Call-Id"), r.Header.Get("X-Function-Status"), string(b)})
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		})}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })

		a, err := viaGateway(gw, "POST", "gw-fn.example.com", "/async", map[string]string{
			"Prefer": "respond-async", "X-Callback-Url": "http://" + ln.Addr().String() + "/cb",
			"Weft-Host": "evil.example.com", "Nats-Expected-Stream": "nosuch",
		}, `{"order":42}`)
		if err != nil {
			t.Fatal(err)
		}
		id := a.header.Get("X-Call-Id")
		if a.status != http.StatusAccepted || id == "" {
			t.Fatalf("async call through the gateway: %d (X-Call-Id %q): %s; want 202 with a call id", a.status, id, a.body)
		}
		eventually(t, 3*time.Minute, "the callback of call "+id, func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range got {
				if c.id == id {
					if c.status != "200" || !strings.Contains(c.body, `"path":"/async"`) {
						return fmt.Errorf("callback status %q body %q", c.status, c.body)
					}
					// The publisher drops a caller's Weft-* and Nats-* headers: the queued
					// call ran with the Host the gateway routed, and JetStream was not steered
					// (Nats-Expected-Stream would have refused the publish).
					if strings.Contains(c.body, "evil") || strings.Contains(c.body, "Nats-") {
						t.Errorf("a forged queue header reached the app: %s", c.body)
					}
					return nil
				}
			}
			return fmt.Errorf("%d callbacks, none for %s", len(got), id)
		})
	})
}
