package controllers

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// warnings collects the API server's warnings, as kubectl prints them.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.msgs
	w.msgs = nil
	return out
}

var _ = Describe("kubectl warnings (config/admission)", Ordered, func() {
	const ns = "warn"
	var (
		seen *warnings
		c    client.Client
	)

	BeforeAll(func() {
		raw, err := os.ReadFile(filepath.Join("..", "config", "admission", "redisproxy_rehoming_warning.yaml"))
		Expect(err).NotTo(HaveOccurred())
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			u := objectFromYAML(doc)
			Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, u))).To(Succeed(), u.GetKind())
		}
		createNamespace(ns)
		seen = &warnings{}
		wcfg := rest.CopyConfig(cfg)
		wcfg.WarningHandlerWithContext = seen
		c, err = client.New(wcfg, client.Options{Scheme: k8sClient.Scheme()})
		Expect(err).NotTo(HaveOccurred())
		Expect(c.Create(ctx, objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {name: cache, namespace: warn}
spec:
  servers:
  - {name: redis-0, address: "10.0.0.1:6379"}
  - {name: redis-1, address: "10.0.0.2:6379"}`))).To(Succeed())
	})

	// update changes the pool with mutate and returns the warnings the update got.
	update := func(mutate func(*meshv1alpha1.RedisProxy)) []string {
		rp := &meshv1alpha1.RedisProxy{}
		Expect(c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cache"}, rp)).To(Succeed())
		mutate(rp)
		seen.take()
		Expect(c.Update(ctx, rp)).To(Succeed(), "a warning must not refuse the change")
		return seen.take()
	}

	It("warns that a new hash function moves keys, and lets the change through", func() {
		// The policy is compiled and bound shortly after it is created: flip the hash until
		// the warning shows up.
		hashes := []meshv1alpha1.HashFunction{"murmur", "fnv1a_64"}
		i := 0
		Eventually(func() []string {
			i++
			return update(func(rp *meshv1alpha1.RedisProxy) { rp.Spec.Sharding.Hash = hashes[i%2] })
		}).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).
			Should(ContainElement(ContainSubstring("moves almost every key to another server")))
	})

	It("warns when ring names change", func() {
		Expect(update(func(rp *meshv1alpha1.RedisProxy) { rp.Spec.Servers[1].Name = "redis-9" })).
			To(ContainElement(ContainSubstring("the server names changed")))
	})

	It("says nothing when only an address changes (the ring keeps its names)", func() {
		Expect(update(func(rp *meshv1alpha1.RedisProxy) { rp.Spec.Servers[0].Address = "10.0.0.5:6379" })).To(BeEmpty())
	})
})
