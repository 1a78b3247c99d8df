package controllers

import (
	"context"
	"errors"
	"net/http"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// CacheSyncer is the part of the manager's cache the readiness check needs.
type CacheSyncer interface {
	WaitForCacheSync(ctx context.Context) bool
}

// cacheSyncWait bounds how long one /readyz probe waits for the caches: a kubelet probe
// times out after 1 s by default.
const cacheSyncWait = 900 * time.Millisecond

// CachesSynced is the manager's readiness check: ready only once its informers have synced.
// A manager whose caches cannot sync (an object it cannot list, a missing RBAC rule) then
// reads not ready instead of ok until controller-runtime gives up and exits.
func CachesSynced(c CacheSyncer) healthz.Checker {
	return func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), cacheSyncWait)
		defer cancel()
		if !c.WaitForCacheSync(ctx) {
			return errors.New("the manager's caches have not synced")
		}
		return nil
	}
}
