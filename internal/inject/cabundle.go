package inject

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle the manager keeps.
const WebhookConfigName = "weft-sidecar-injector"

// ValidatingWebhookConfigName is the MeshFunction validator's configuration (config/webhook,
// after config/default's namePrefix), served by the same webhook server.
const ValidatingWebhookConfigName = "weft-meshfunction-validator"

// MeshFunctionValidatePath is where the webhook server serves the MeshFunction validator
// (controllers.MeshFunctionValidator).
const MeshFunctionValidatePath = "/validate-meshfunction"

// CABundleKeeper writes the webhook CA into every webhook of the sidecar injector's
// MutatingWebhookConfiguration and the MeshFunction validator's ValidatingWebhookConfiguration
// and rewrites it whenever something (kubectl apply of config/webhook, Argo CD sync) puts
// back a stale or empty caBundle. It polls rather than watches: the configuration may be
// created after the manager starts, and one GET per interval is cheaper than an informer.
type CABundleKeeper struct {
	Client client.Client
	// Name is the MutatingWebhookConfiguration (the sidecar injector); empty: none.
	Name string
	// ValidatingName is a ValidatingWebhookConfiguration served by the same server (the
	// MeshFunction validator); empty: none.
	ValidatingName string
	CA             []byte
	Interval       time.Duration
	Clock          clock.Clock
	Log            logr.Logger
}

// Sync makes the configurations' caBundles equal the CA. It returns false, nil when a
// configuration does not exist yet.
func (k *CABundleKeeper) Sync(ctx context.Context) (bool, error) {
	found := true
	if k.Name != "" {
		ok, err := k.syncMutating(ctx)
		if err != nil {
			return false, err
		}
		found = found && ok
	}
	if k.ValidatingName != "" {
		ok, err := k.syncValidating(ctx)
		if err != nil {
			return false, err
		}
		found = found && ok
	}
	return found, nil
}

func (k *CABundleKeeper) syncValidating(ctx context.Context) (bool, error) {
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	return k.syncOne(ctx, vwc, k.ValidatingName, "ValidatingWebhookConfiguration", func() []*admissionregistrationv1.WebhookClientConfig {
		out := make([]*admissionregistrationv1.WebhookClientConfig, len(vwc.Webhooks))
		for i := range vwc.Webhooks {
			out[i] = &vwc.Webhooks[i].ClientConfig
		}
		return out
	})
}

func (k *CABundleKeeper) syncMutating(ctx context.Context) (bool, error) {
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	return k.syncOne(ctx, mwc, k.Name, "MutatingWebhookConfiguration", func() []*admissionregistrationv1.WebhookClientConfig {
		out := make([]*admissionregistrationv1.WebhookClientConfig, len(mwc.Webhooks))
		for i := range mwc.Webhooks {
			out[i] = &mwc.Webhooks[i].ClientConfig
		}
		return out
	})
}

// syncOne reads the configuration obj called name and writes the CA into every webhook's
// client config (configs lists them in obj as read).
func (k *CABundleKeeper) syncOne(ctx context.Context, obj client.Object, name, kind string, configs func() []*admissionregistrationv1.WebhookClientConfig) (bool, error) {
	if err := k.Client.Get(ctx, types.NamespacedName{Name: name}, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("reading %s %s: %w", kind, name, err)
	}
	orig := obj.DeepCopyObject().(client.Object)
	changed := false
	for _, cc := range configs() {
		if !sameBundle(cc.CABundle, k.CA) {
			cc.CABundle = k.CA
			changed = true
		}
	}
	if !changed {
		return true, nil
	}
	if err := k.Client.Patch(ctx, obj, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return false, fmt.Errorf("writing caBundle of %s %s: %w", kind, name, err)
	}
	k.Log.Info("webhook caBundle updated", "kind", kind, "name", name)
	return true, nil
}

// Start runs Sync now and then every Interval until ctx ends (a manager Runnable).
func (k *CABundleKeeper) Start(ctx context.Context) error {
	interval := k.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	missingLogged := false
	for {
		found, err := k.Sync(ctx)
		switch {
		case err != nil:
			k.Log.Error(err, "keeping the webhook caBundle; retrying", "in", interval)
		case !found && !missingLogged:
			k.Log.Info("webhook configuration not found yet; apply config/webhook to enable sidecar injection and MeshFunction validation",
				"mutating", k.Name, "validating", k.ValidatingName)
			missingLogged = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-k.Clock.After(interval):
		}
	}
}

// NeedLeaderElection is false: every replica writes the same CA from the shared Secret.
func (k *CABundleKeeper) NeedLeaderElection() bool { return false }
