//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var podCIDR = netip.MustParsePrefix("10.244.0.0/16")

func pods(t *testing.T, selector string) []corev1.Pod {
	t.Helper()
	l, err := cs.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// readyPod waits up to timeout for a running, ready pod labelled app=<app> in ns.
func readyPod(t *testing.T, ns, app string, timeout time.Duration) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	eventually(t, timeout, app+" pod in "+ns+" running and ready", func() error {
		l, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return err
		}
		for _, p := range l.Items {
			if readyRunning(p) {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("%d %s pods, none ready", len(l.Items), app)
	})
	return pod
}

func readyRunning(p corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func TestPodsRunWithInjectedSidecars(t *testing.T) {
	eventually(t, 4*time.Minute, "demo pods running and ready", func() error {
		ps := pods(t, "app in (reviews,ratings,slow,caller)")
		if len(ps) < 6 {
			return fmt.Errorf("%d demo pods, want 6", len(ps))
		}
		for _, p := range ps {
			if !readyRunning(p) {
				return fmt.Errorf("pod %s is %s and not ready: %+v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
			}
		}
		return nil
	})
	for _, p := range pods(t, "app in (reviews,ratings,slow,caller)") {
		names := []string{}
		for _, c := range p.Spec.Containers {
			names = append(names, c.Name)
		}
		if !slices.Contains(names, "weft-sidecar") {
			t.Errorf("pod %s has containers %v, want the injected weft-sidecar", p.Name, names)
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !podCIDR.Contains(ip) {
			t.Errorf("pod %s has podIP %q, want an address in %s", p.Name, p.Status.PodIP, podCIDR)
		}
		if p.Status.HostIP != "10.244.0.1" {
			t.Errorf("pod %s has hostIP %q, want the bridge address 10.244.0.1", p.Name, p.Status.HostIP)
		}
	}
}

func TestEndpointSlicesListReadyPods(t *testing.T) {
	eventually(t, 4*time.Minute, "reviews EndpointSlices", func() error {
		want := map[string]bool{}
		for _, p := range pods(t, "app=reviews") {
			if readyRunning(p) {
				want[p.Status.PodIP] = true
			}
		}
		l, err := cs.DiscoveryV1().EndpointSlices("default").List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=reviews"})
		if err != nil {
			return err
		}
		got := map[string]bool{}
		for _, s := range l.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					got[e.Addresses[0]] = true
				}
			}
		}
		if len(want) != 2 || fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("ready endpoints %v, ready reviews pods %v; want the same two", got, want)
		}
		return nil
	})
}

// tally is the caller example's answer.
type tally struct {
	Total     int            `json:"total"`
	ByStatus  map[string]int `json:"byStatus"`
	ByVersion map[string]int `json:"byVersion"`
	Errors    int            `json:"errors"`
	LastError string         `json:"lastError"`
	LastBody  string         `json:"lastBody"`
	// ColdStarts counts answers whose call the caller's sidecar held while the function
	// scaled from zero.
	ColdStarts   int     `json:"coldStarts"`
	MaxColdStart float64 `json:"maxColdStartSeconds"`
}

// call asks the caller pod to make n calls to url through its sidecar.
func call(t *testing.T, url string, n int) (tally, error) {
	t.Helper()
	return callC(t, url, n, 20)
}

// callC is call with c calls in flight at once.
func callC(t *testing.T, url string, n, c int) (tally, error) {
	t.Helper()
	ps := pods(t, "app=caller")
	if len(ps) == 0 || ps[0].Status.PodIP == "" {
		return tally{}, fmt.Errorf("no caller pod with an IP yet")
	}
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + ps[0].Status.PodIP + ":8080/call?c=" + strconv.Itoa(c) + "&n=" + strconv.Itoa(n) + "&url=" + url)
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

// routed waits until every one of 20 calls to url gets an answer of the wanted kind.
func routed(t *testing.T, url string, ok func(tally) bool) {
	t.Helper()
	eventually(t, 3*time.Minute, "routes for "+url+" programmed in the caller's sidecar", func() error {
		got, err := call(t, url, 20)
		if err != nil {
			return err
		}
		if !ok(got) {
			return fmt.Errorf("answers %+v", got)
		}
		return nil
	})
}

func TestCanarySplit(t *testing.T) {
	routed(t, "http://reviews:9080/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	n := th.CanaryCalls
	got, err := call(t, "http://reviews:9080/", n)
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := got.ByVersion["v1"], got.ByVersion["v2"]
	t.Logf("v1: %d / v2: %d of %d (target 80/20)", v1, v2, n)
	// The bounds and why they are wide enough: testdata/thresholds.env.
	if v1+v2 != n || v1 < th.CanaryV1Min || v1 > th.CanaryV1Max {
		t.Errorf("split v1=%d v2=%d of %d (statuses %v), want v1 in %d..%d", v1, v2, n, got.ByStatus, th.CanaryV1Min, th.CanaryV1Max)
	}
}

func TestRetriesHideFailingPod(t *testing.T) {
	// Routed to both pods: the failing one turns ready a moment after the healthy one.
	routed(t, "http://ratings-direct:9080/", func(g tally) bool {
		return g.ByStatus["200"]+g.ByStatus["500"] == 20 && g.ByStatus["500"] > 0
	})
	n := th.RetryCalls
	direct, err := call(t, "http://ratings-direct:9080/", n)
	if err != nil {
		t.Fatal(err)
	}
	// Half the calls land on the failing pod without retries: far more than the mark.
	if direct.ByStatus["500"] < th.RetryDirectFailedMin {
		t.Fatalf("without retries only %d of %d calls failed, want at least %d; the failing ratings pod is not being called (%+v)",
			direct.ByStatus["500"], n, th.RetryDirectFailedMin, direct)
	}
	routed(t, "http://ratings:9080/", func(g tally) bool { return g.ByStatus["200"]+g.ByStatus["500"] == 20 })
	with, err := call(t, "http://ratings:9080/", n)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("with retries %d of %d succeeded; without, %d of %d failed", with.ByStatus["200"], n, direct.ByStatus["500"], n)
	if with.ByStatus["200"] < th.RetryOKMin {
		t.Errorf("with retries %d of %d succeeded (%+v), want at least %d", with.ByStatus["200"], n, with, th.RetryOKMin)
	}
}

func TestFaultAbort(t *testing.T) {
	routed(t, "http://details:9080/", func(g tally) bool { return g.ByStatus["200"]+g.ByStatus["503"] == 20 })
	n := th.FaultCalls
	got, err := call(t, "http://details:9080/", n)
	if err != nil {
		t.Fatal(err)
	}
	f := got.ByStatus["503"]
	t.Logf("503: %d of %d (target 50%%)", f, n)
	// The bounds and why they are wide enough: testdata/thresholds.env.
	if f < th.FaultAbortMin || f > th.FaultAbortMax || f+got.ByStatus["200"] != n {
		t.Errorf("fault aborted %d of %d (statuses %v), want %d..%d", f, n, got.ByStatus, th.FaultAbortMin, th.FaultAbortMax)
	}
}

func TestRouteTimeout(t *testing.T) {
	n := th.TimeoutCalls
	quick := fmt.Sprintf("http://slow:9080/%%3Fms%%3D%d", th.TimeoutQuickMS)
	routed(t, quick, func(g tally) bool { return g.ByStatus["200"] == 20 })
	// The route gives 1 s; the app would answer 200 after TimeoutSlowMS. Only the sidecar's
	// route timeout answers 504, so the status alone shows the cut-off (no wall-clock assertion).
	got, err := call(t, fmt.Sprintf("http://slow:9080/%%3Fms%%3D%d", th.TimeoutSlowMS), n)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["504"] != n {
		t.Errorf("%d calls asking for %d ms got %v, want all %d × 504 from the route timeout", n, th.TimeoutSlowMS, got.ByStatus, n)
	}
}

func TestUnmappedImageWaitsWithErrImagePull(t *testing.T) {
	ctx := context.Background()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "unmapped", Namespace: "default", Labels: map[string]string{"weft.dev/inject": "false"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "docker.io/library/nginx:1.27"}}}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Pods("default").Delete(ctx, "unmapped", metav1.DeleteOptions{}) })
	eventually(t, 2*time.Minute, "ErrImagePull on the unmapped image", func() error {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "unmapped", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, s := range p.Status.ContainerStatuses {
			if w := s.State.Waiting; w != nil && w.Reason == "ErrImagePull" && strings.Contains(w.Message, "--image-map") {
				return nil
			}
		}
		return fmt.Errorf("container statuses %+v", p.Status.ContainerStatuses)
	})
}

// TestDeletedPodStopsAndIsReplaced runs last: it takes a reviews pod away.
func TestDeletedPodStopsAndIsReplaced(t *testing.T) {
	ctx := context.Background()
	var victim corev1.Pod
	eventually(t, 3*time.Minute, "a ready reviews v2 pod", func() error {
		for _, p := range pods(t, "app=reviews,version=v2") {
			if readyRunning(p) {
				victim = p
				return nil
			}
		}
		return fmt.Errorf("none ready")
	})
	var pids []int
	for _, s := range victim.Status.ContainerStatuses {
		pid, err := strconv.Atoi(strings.TrimPrefix(s.ContainerID, "weft-dev://"))
		if err != nil {
			t.Fatalf("container %s has ID %q, want weft-dev://<pid>", s.Name, s.ContainerID)
		}
		pids = append(pids, pid)
	}
	if err := cs.CoreV1().Pods("default").Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "processes of the deleted pod gone", func() error {
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
	eventually(t, 3*time.Minute, "a replacement reviews v2 pod ready", func() error {
		for _, p := range pods(t, "app=reviews,version=v2") {
			if p.UID != victim.UID && readyRunning(p) {
				return nil
			}
		}
		return fmt.Errorf("no new ready pod yet")
	})
}
