//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// clusterNS is not labelled weft.dev/inject: its pods get no sidecar and no proxy
// settings, so every call they make goes through the local mesh's DNS and kube-proxy alone.
const clusterNS = "cluster-e2e"

// The kube-dns ClusterIP the local mesh uses by default.
const clusterDNSIP = "10.96.0.10"

func clusterObjects() []any {
	one := int32(1)
	labels := func(app string) map[string]string { return map[string]string{"app": app} }
	svc := func(name, app string, port int32) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: clusterNS},
			Spec: corev1.ServiceSpec{Selector: labels(app), Ports: []corev1.ServicePort{
				{Name: "http", Port: port, TargetPort: intstr.FromInt32(8080)}}}}
	}
	deploy := func(app, image, probe string) *appsv1.Deployment {
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: clusterNS},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels(app)},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels(app)},
					Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr(int64(2)), Containers: []corev1.Container{{
						Name: app, Image: image, Env: []corev1.EnvVar{{Name: "VERSION", Value: "cluster"}},
						ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
							HTTPGet: &corev1.HTTPGetAction{Path: probe, Port: intstr.FromInt32(8080)}}},
					}}}}}}
	}
	return []any{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: clusterNS}},
		svc("echo", "echo", 80), deploy("echo", "weft.dev/examples/echo:latest", "/"),
		// "self" selects the caller's own pod: a call to it from the caller is DNATed
		// back to the caller (the hairpin case).
		svc("self", "caller", 9090), deploy("caller", "weft.dev/examples/caller:latest", "/healthz"),
	}
}

func createClusterObjects(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, o := range clusterObjects() {
		var err error
		switch o := o.(type) {
		case *corev1.Namespace:
			_, err = cs.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *corev1.Service:
			_, err = cs.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *appsv1.Deployment:
			_, err = cs.AppsV1().Deployments(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), clusterNS, metav1.DeleteOptions{})
	})
}

func clusterPod(t *testing.T, app string) corev1.Pod {
	t.Helper()
	return readyPod(t, clusterNS, app, 3*time.Minute)
}

// callFrom asks the caller pod to make n calls to u itself (no proxy: it has no sidecar).
func callFrom(caller corev1.Pod, u string, n int) (tally, error) { return callFromC(caller, u, n, 1) }

// callFromC is callFrom with c calls at a time.
func callFromC(caller corev1.Pod, u string, n, c int) (tally, error) {
	client := &http.Client{Timeout: 3 * time.Minute, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get(fmt.Sprintf("http://%s:8080/call?c=%d&n=%d&url=%s", caller.Status.PodIP, c, n, url.QueryEscape(u)))
	if err != nil {
		return tally{}, err
	}
	defer resp.Body.Close()
	var out tally
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return tally{}, fmt.Errorf("decoding caller answer: %w", err)
	}
	return out, nil
}

func TestClusterDNSAndServicesWithoutASidecar(t *testing.T) {
	hostResolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	createClusterObjects(t)
	caller, _ := clusterPod(t, "caller"), clusterPod(t, "echo")
	if len(caller.Spec.Containers) != 1 || len(caller.Spec.InitContainers) != 0 {
		t.Fatalf("caller pod in the unlabelled namespace has containers %d+%d init, want just its own (no sidecar)",
			len(caller.Spec.Containers), len(caller.Spec.InitContainers))
	}
	echoSvc, err := cs.CoreV1().Services(clusterNS).Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := echoSvc.Spec.ClusterIP
	if a, err := netip.ParseAddr(clusterIP); err != nil || !netip.MustParsePrefix("10.96.0.0/16").Contains(a) {
		t.Fatalf("echo's ClusterIP %q is not in the service range", clusterIP)
	}

	pid := containerPid(t, caller, "caller")
	t.Run("resolv.conf", func(t *testing.T) {
		// The caller process sees the kubelet's resolv.conf through its mount namespace...
		got, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", pid))
		if err != nil {
			t.Fatal(err)
		}
		want := "nameserver " + clusterDNSIP + "\nsearch " + clusterNS + ".svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
		if string(got) != want {
			t.Errorf("the pod's /etc/resolv.conf is\n%s\nwant\n%s", got, want)
		}
		// ...while the host's is untouched.
		now, err := os.ReadFile("/etc/resolv.conf")
		if err != nil || !bytes.Equal(now, hostResolv) {
			t.Errorf("the host's /etc/resolv.conf changed: %q (%v), was %q", now, err, hostResolv)
		}
		if bytes.Equal(now, got) {
			t.Error("the pod sees the host's resolv.conf")
		}
	})

	t.Run("names resolve in the pod", func(t *testing.T) {
		// glibc's resolver (getent) in the pod's network and mount namespaces: the short
		// name goes through the search list, the FQDN directly, both to the ClusterIP.
		for _, name := range []string{"echo", "echo." + clusterNS, "echo." + clusterNS + ".svc.cluster.local", "kube-dns.kube-system"} {
			out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "-m", "getent", "ahostsv4", name).CombinedOutput()
			want := clusterIP
			if strings.HasPrefix(name, "kube-dns") {
				want = clusterDNSIP
			}
			if err != nil || !strings.HasPrefix(string(out), want+" ") {
				t.Errorf("getent ahostsv4 %s in the pod: %v\n%s\nwant %s", name, err, out, want)
			}
		}
		// A name that is not a Service fails (NXDOMAIN from the cluster domain) rather
		// than resolving anywhere.
		if out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-n", "-m", "getent", "hosts", "nosuch."+clusterNS+".svc.cluster.local").CombinedOutput(); err == nil {
			t.Errorf("a missing Service resolved: %s", out)
		}
	})

	t.Run("HTTP through the ClusterIP", func(t *testing.T) {
		for _, u := range []string{"http://echo/", "http://echo." + clusterNS + ".svc.cluster.local/", "http://" + clusterIP + "/"} {
			eventually(t, time.Minute, "calls to "+u, func() error {
				got, err := callFrom(caller, u, 5)
				if err != nil {
					return err
				}
				// X-Version "cluster" comes from echo only.
				if got.ByStatus["200"] != 5 || got.ByVersion["cluster"] != 5 {
					return fmt.Errorf("answers %+v", got)
				}
				return nil
			})
		}
	})

	t.Run("hairpin: the caller calls a Service that is itself", func(t *testing.T) {
		eventually(t, time.Minute, "calls to http://self:9090/healthz", func() error {
			got, err := callFrom(caller, "http://self:9090/healthz", 5)
			if err != nil {
				return err
			}
			if got.ByStatus["200"] != 5 {
				return fmt.Errorf("answers %+v", got)
			}
			return nil
		})
	})

	t.Run("a deleted Service stops resolving and routing", func(t *testing.T) {
		self, err := cs.CoreV1().Services(clusterNS).Get(context.Background(), "self", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.CoreV1().Services(clusterNS).Delete(context.Background(), "self", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// New connections from the pod (curl, a fresh process: the caller's kept-alive
		// connection would outlive the rules, as established connections do on a node).
		inPod := func(args ...string) ([]byte, error) {
			return exec.Command("nsenter", append([]string{"-t", fmt.Sprint(pid), "-n", "-m"}, args...)...).CombinedOutput()
		}
		eventually(t, time.Minute, "self gone from DNS and kube-proxy", func() error {
			if out, err := inPod("getent", "hosts", "self"); err == nil {
				return fmt.Errorf("self still resolves: %s", out)
			}
			if out, err := inPod("curl", "--noproxy", "*", "-sS", "--max-time", "2", "http://"+self.Spec.ClusterIP+":9090/healthz"); err == nil {
				return fmt.Errorf("the deleted ClusterIP %s still answers: %s", self.Spec.ClusterIP, out)
			}
			return nil
		})
		// The other Service is unaffected, by name, from a new process.
		if out, err := inPod("curl", "--noproxy", "*", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://echo/"); err != nil || string(out) != "200" {
			t.Errorf("curl http://echo/ from the pod after deleting self: %v: %s", err, out)
		}
	})
}
