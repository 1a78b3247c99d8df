package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftmesh/weft/internal/inject"
)

// ManagerSwitch stops and starts the manager Run supervises as a host process. Stopped, the
// mesh has no Weft control plane of its own: that is the state in which a manager installed
// from dist/install.yaml runs as a pod (test/e2e/release_test.go). Pods already running
// keep their sidecars' last configuration meanwhile.
type ManagerSwitch struct {
	mu     sync.Mutex
	cs     kubernetes.Interface
	port   int
	launch func() (func(), error)
	stop   func() // nil while stopped
}

// webhookConfigName is the injection webhook configuration's name, in the sandbox as in
// config/webhook (inject.WebhookConfigName).
const webhookConfigName = inject.WebhookConfigName

// init is Run's: how to start the manager, and what its webhook needs.
func (s *ManagerSwitch) init(cs kubernetes.Interface, webhookPort int, launch func() (func(), error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cs, s.port, s.launch = cs, webhookPort, launch
}

// Stop stops the host manager and deletes the webhook configurations that point at it
// (weft-sidecar-injector and weft-meshfunction-validator, by URL): an install's configuration of the same name names a
// Service instead, and kubectl apply cannot turn the one into the other (clientConfig may
// hold a url or a service, not both). It returns once the manager has exited.
func (s *ManagerSwitch) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.launch == nil {
		return errors.New("the local mesh has not started its manager yet")
	}
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
	err := s.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, webhookConfigName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting MutatingWebhookConfiguration %s: %w", webhookConfigName, err)
	}
	// The MeshFunction validator's configuration points at the host manager by URL too.
	err = s.cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, inject.ValidatingWebhookConfigName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting ValidatingWebhookConfiguration %s: %w", inject.ValidatingWebhookConfigName, err)
	}
	return nil
}

// Start (re)creates the namespace and webhook configuration the host manager needs, starts
// it and returns once it serves the injection webhook. Starting a running manager does
// nothing.
func (s *ManagerSwitch) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.launch == nil {
		return errors.New("the local mesh has not started its manager yet")
	}
	return s.startLocked(ctx)
}

func (s *ManagerSwitch) startManager(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked(ctx)
}

func (s *ManagerSwitch) startLocked(ctx context.Context) error {
	if s.stop != nil {
		return nil
	}
	if err := prepareCluster(ctx, s.cs, s.port); err != nil {
		return err
	}
	stop, err := s.launch()
	if err != nil {
		return err
	}
	s.stop = stop
	return waitWebhook(ctx, s.cs, s.port)
}

// stopManager is Run's teardown.
func (s *ManagerSwitch) stopManager() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}
