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

// CABundleKeeper writes the webhook CA into every webhook of a MutatingWebhookConfiguration
// and rewrites it whenever something (kubectl apply of config/webhook, Argo CD sync) puts
// back a stale or empty caBundle. It polls rather than watches: the configuration may be
// created after the manager starts, and one GET per interval is cheaper than an informer.
type CABundleKeeper struct {
	Client   client.Client
	Name     string
	CA       []byte
	Interval time.Duration
	Clock    clock.Clock
	Log      logr.Logger
}

// Sync makes the configuration's caBundles equal the CA. It returns false, nil when the
// configuration does not exist yet.
func (k *CABundleKeeper) Sync(ctx context.Context) (bool, error) {
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := k.Client.Get(ctx, types.NamespacedName{Name: k.Name}, mwc); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("reading MutatingWebhookConfiguration %s: %w", k.Name, err)
	}
	orig := mwc.DeepCopy()
	changed := false
	for i := range mwc.Webhooks {
		if !sameBundle(mwc.Webhooks[i].ClientConfig.CABundle, k.CA) {
			mwc.Webhooks[i].ClientConfig.CABundle = k.CA
			changed = true
		}
	}
	if !changed {
		return true, nil
	}
	if err := k.Client.Patch(ctx, mwc, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return false, fmt.Errorf("writing caBundle of MutatingWebhookConfiguration %s: %w", k.Name, err)
	}
	k.Log.Info("webhook caBundle updated", "mutatingWebhookConfiguration", k.Name)
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
			k.Log.Info("MutatingWebhookConfiguration not found yet; apply config/webhook to enable sidecar injection", "name", k.Name)
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
