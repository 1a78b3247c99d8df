package ca_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/testenv"
)

// The Secret weft-system/weft-ca against a real API server: created with one root when
// missing, left alone while nothing is due, rotated (old + new root) when the root nears
// expiry, and a Secret that does not decode is reported, never overwritten.
func TestStoreKeepsTheRootsInTheSecret(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testenv.Missing(t, "KUBEBUILDER_ASSETS is not set; run with KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh | tail -n1)")
	}
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "weft-system"}}); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: "weft-system", Name: "weft-ca"}
	clk := clocktesting.NewFakeClock(time.Now())
	opts := ca.Options{RootValidity: 100 * time.Hour, RotateBefore: 20 * time.Hour, DefaultTTL: time.Hour, Overlap: 2 * time.Hour}
	authority := ca.New(opts, nil)
	store := &ca.Store{Client: c, Key: key, CA: authority, Clock: clk, Log: logr.Discard()}

	read := func() *corev1.Secret {
		t.Helper()
		s := &corev1.Secret{}
		if err := c.Get(ctx, key, s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	if err := store.Sync(ctx); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	first := read()
	roots, err := ca.DecodeRoots(first.Data[ca.KeyRoots])
	if err != nil || len(roots) != 1 || len(authority.Roots()) != 1 {
		t.Fatalf("after creation: %d roots in the Secret (%v), %d in the CA; want 1", len(roots), err, len(authority.Roots()))
	}
	if !strings.Contains(string(first.Data[ca.KeyBundle]), "BEGIN CERTIFICATE") {
		t.Error("no ca.crt bundle in the Secret")
	}

	clk.Step(10 * time.Hour)
	if err := store.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if read().ResourceVersion != first.ResourceVersion {
		t.Error("a sync with nothing due rewrote the Secret")
	}

	clk.Step(71 * time.Hour) // 81 h of 100: rotate
	if err := store.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	roots, _ = ca.DecodeRoots(read().Data[ca.KeyRoots])
	if len(roots) != 2 || len(authority.Roots()) != 2 {
		t.Fatalf("after rotation: %d roots in the Secret, %d in the CA; want old + new", len(roots), len(authority.Roots()))
	}
	if n := strings.Count(string(authority.Bundle(clk.Now())), "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("bundle during the overlap has %d roots, want 2", n)
	}

	// Another replica (a fresh CA over the same Secret) loads the same two roots.
	other := ca.New(opts, nil)
	if err := (&ca.Store{Client: c, Key: key, CA: other, Clock: clk, Log: logr.Discard()}).Sync(ctx); err != nil || len(other.Roots()) != 2 {
		t.Errorf("a second replica loaded %d roots (%v), want 2", len(other.Roots()), err)
	}

	bad := read()
	bad.Data[ca.KeyRoots] = []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
	if err := c.Update(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if err := store.Sync(ctx); err == nil || !strings.Contains(err.Error(), "fix or delete the Secret") {
		t.Errorf("a corrupt Secret: %v, want an error saying what to do", err)
	}
	if string(read().Data[ca.KeyRoots]) != string(bad.Data[ca.KeyRoots]) {
		t.Error("the corrupt Secret was overwritten")
	}
	if len(authority.Roots()) != 2 {
		t.Error("a failed sync dropped the roots in use")
	}
}
