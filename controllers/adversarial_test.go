package controllers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/weftmesh/weft/internal/workload"
	"github.com/weftmesh/weft/internal/xds"
)

// The adversarial battery: one manifest per file in testdata/adversarial, each applied to the
// real API server with a manager running, as a careless or hostile user would (issue 13).
//
// File format. Leading comment lines say what must happen to the LAST document:
//
//	# expect: refused <Go regexp matched against the API server's error message>
//	# expect: condition <Type>=<True|False|Unknown> <Reason>
//	# why: <one line>            (optional)
//
// "refused" means creating the object fails with a matching message. "condition" means the
// object is accepted and, within conditionTimeout, its status carries that condition. The
// documents before the last are setup (Services, Secrets, other routes) and must be accepted.
// Every file runs in a fresh namespace, adv-<NNN> (NNN: the file's number); the harness sets
// metadata.namespace of every document to it and replaces ${NS} in the text with it, and ${NS2}
// with a second fresh namespace, adv-<NNN>-b, created only for files that use it, for
// cross-namespace cases (a document whose metadata.namespace is ${NS2} stays there). A file with no expectation fails: nothing may be
// silently accepted.

const (
	adversarialDir = "testdata/adversarial"
	// conditionTimeout bounds the wait for an expected condition.
	conditionTimeout = 30 * time.Second
)

// adversarialCase is one parsed file.
type adversarialCase struct {
	file      string
	ns, ns2   string
	refused   *regexp.Regexp
	condType  string
	condState string
	reason    string
	docs      []*unstructured.Unstructured
}

var (
	expectRefused   = regexp.MustCompile(`^#\s*expect:\s*refused\s+(.+?)\s*$`)
	expectCondition = regexp.MustCompile(`^#\s*expect:\s*condition\s+([A-Za-z]+)=(True|False|Unknown)\s+([A-Za-z]+)\s*$`)
)

// adversarialFiles lists the battery, read while Ginkgo builds the spec tree.
func adversarialFiles() []string {
	files, err := filepath.Glob(filepath.Join(adversarialDir, "*.yaml"))
	if err != nil {
		panic(err)
	}
	return files
}

// namespacesOf are the two fresh namespaces of a file: adv-<NNN> and adv-<NNN>-b.
func namespacesOf(file string) (string, string) {
	base := filepath.Base(file)
	num, _, _ := strings.Cut(base, "-")
	ns := "adv-" + strings.ToLower(num)
	return ns, ns + "-b"
}

// parseAdversarial reads one file: its expectation from the leading comments and its
// documents, with namespaces rewritten.
func parseAdversarial(file string) (*adversarialCase, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	c := &adversarialCase{file: file}
	c.ns, c.ns2 = namespacesOf(file)
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "#") {
			if line == "" || line == "---" {
				continue
			}
			break
		}
		if m := expectRefused.FindStringSubmatch(line); m != nil {
			if c.refused, err = regexp.Compile(m[1]); err != nil {
				return nil, fmt.Errorf("%s: expect regexp: %w", file, err)
			}
		} else if m := expectCondition.FindStringSubmatch(line); m != nil {
			c.condType, c.condState, c.reason = m[1], m[2], m[3]
		} else if strings.HasPrefix(strings.TrimSpace(strings.TrimPrefix(line, "#")), "expect:") {
			return nil, fmt.Errorf("%s: cannot read %q: want `# expect: refused <regexp>` or `# expect: condition <Type>=<Status> <Reason>`", file, line)
		}
	}
	if (c.refused == nil) == (c.condType == "") {
		return nil, fmt.Errorf("%s: needs exactly one `# expect:` line: nothing may be silently accepted", file)
	}
	text := strings.NewReplacer("${NS2}", c.ns2, "${NS}", c.ns).Replace(string(raw))
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(text), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetNamespace() != c.ns2 {
			u.SetNamespace(c.ns)
		}
		c.docs = append(c.docs, u)
	}
	if len(c.docs) == 0 {
		return nil, fmt.Errorf("%s: no documents", file)
	}
	return c, nil
}

// conditionOf reads one condition of an unstructured object's status.
func conditionOf(u *unstructured.Unstructured, typ string) (status, reason, message string, found bool) {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != typ {
			continue
		}
		s, _ := m["status"].(string)
		r, _ := m["reason"].(string)
		msg, _ := m["message"].(string)
		return s, r, msg, true
	}
	return "", "", "", false
}

// startBatteryManager runs a manager with every Weft reconciler (snapshot, MeshFunction,
// RedisProxy) over the given namespaces, as cmd/manager wires them, and returns the function
// that stops it and a channel that receives its exit error.
func startBatteryManager(namespaces []string) (context.CancelFunc, <-chan error, ctrl.Manager) {
	nsCfg := map[string]cache.Config{}
	for _, ns := range namespaces {
		nsCfg[ns] = cache.Config{}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 k8sClient.Scheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "127.0.0.1:0",
		Cache:                  cache.Options{DefaultNamespaces: nsCfg},
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	Expect(err).NotTo(HaveOccurred())
	r := NewSnapshotReconciler(mgr.GetClient(), mgr.GetAPIReader(), xds.NewCache(), mgr.Elected())
	Expect(r.SetupWithManager(mgr)).To(Succeed())
	Expect((&MeshFunctionReconciler{Client: mgr.GetClient(), Options: workload.DefaultOptions()}).SetupWithManager(mgr)).To(Succeed())
	Expect((&RedisProxyReconciler{Client: mgr.GetClient(), Options: workload.DefaultOptions()}).SetupWithManager(mgr)).To(Succeed())
	mctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	return stop, done, mgr
}

// createNamespace creates ns unless it exists.
func createNamespace(ns string) {
	Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))).To(Succeed())
}

// expectReconciling shows a manager still works: a fresh good MeshRoute in ns is Accepted.
func expectReconciling(ns, name string) {
	route := objectFromYAML(strings.ReplaceAll(strings.Replace(validRoute, "default", ns, 1), "NAME", name))
	Expect(k8sClient.Create(ctx, route)).To(Succeed())
	Eventually(func(g Gomega) {
		u := route.DeepCopy()
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(route), u)).To(Succeed())
		s, r, msg, ok := conditionOf(u, "Accepted")
		g.Expect(ok).To(BeTrue(), "no Accepted condition yet")
		g.Expect([]string{s, r}).To(Equal([]string{"True", "Accepted"}), msg)
		// kubectl's SYNCED column shows 0, not a blank, for a route no sidecar receives.
		synced, found, err := unstructured.NestedInt64(u.Object, "status", "syncedSidecars")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(found).To(BeTrue(), "status.syncedSidecars is missing: SYNCED would be blank")
		g.Expect(synced).To(BeZero())
	}).WithTimeout(conditionTimeout).WithPolling(100 * time.Millisecond).Should(Succeed())
}

var _ = Describe("adversarial battery", Ordered, ContinueOnFailure, func() {
	files := adversarialFiles()
	var (
		stop context.CancelFunc
		done <-chan error
	)
	const afterNS = "adv-after"

	BeforeAll(func() {
		Expect(len(files)).To(BeNumerically(">=", 1), "no files in %s", adversarialDir)
		namespaces := []string{afterNS}
		for _, f := range files {
			ns, ns2 := namespacesOf(f)
			namespaces = append(namespaces, ns)
			// The second namespace only where a file uses it: every namespace costs the
			// manager's cache one informer per kind.
			if raw, err := os.ReadFile(f); err == nil && strings.Contains(string(raw), "${NS2}") {
				namespaces = append(namespaces, ns2)
			}
		}
		for _, ns := range namespaces {
			createNamespace(ns)
		}
		stop, done, _ = startBatteryManager(namespaces)
	})
	AfterAll(func() {
		if stop != nil {
			stop()
		}
	})

	for _, file := range files {
		It(filepath.Base(file), func() {
			c, err := parseAdversarial(file)
			Expect(err).NotTo(HaveOccurred())
			setup, last := c.docs[:len(c.docs)-1], c.docs[len(c.docs)-1]
			for _, u := range setup {
				Expect(k8sClient.Create(ctx, u)).To(Succeed(), "setup %s %s", u.GetKind(), u.GetName())
			}
			err = k8sClient.Create(ctx, last)
			if c.refused != nil {
				Expect(err).To(HaveOccurred(), "%s %s was accepted; the file expects it refused with %q", last.GetKind(), last.GetName(), c.refused)
				Expect(err.Error()).To(MatchRegexp(c.refused.String()))
				return
			}
			Expect(err).NotTo(HaveOccurred(), "the file expects %s %s accepted with condition %s=%s %s", last.GetKind(), last.GetName(), c.condType, c.condState, c.reason)
			Eventually(func(g Gomega) {
				u := last.DeepCopy()
				g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(last), u)).To(Succeed())
				s, r, msg, ok := conditionOf(u, c.condType)
				g.Expect(ok).To(BeTrue(), "no %s condition yet; status: %v", c.condType, u.Object["status"])
				g.Expect([]string{s, r}).To(Equal([]string{c.condState, c.reason}), msg)
			}).WithTimeout(conditionTimeout).WithPolling(100 * time.Millisecond).Should(Succeed())
		})
	}

	It("leaves the manager running and reconciling", func() {
		Consistently(done).ShouldNot(Receive(), "the manager stopped")
		expectReconciling(afterNS, "still-reconciling")
	})
})
