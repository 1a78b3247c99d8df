package controllers

import (
	"context"
	"net/http/httptest"
	"testing"
)

type syncer bool

func (s syncer) WaitForCacheSync(ctx context.Context) bool {
	if !s {
		<-ctx.Done()
	}
	return bool(s)
}

// Regression (issue 13): /readyz was a plain ping, so a manager whose caches never synced
// read ready for the two minutes before it exited.
func TestReadyOnlyOnceCachesSynced(t *testing.T) {
	req := httptest.NewRequest("GET", "/readyz", nil)
	if err := CachesSynced(syncer(false))(req); err == nil {
		t.Fatal("caches that never sync read ready")
	}
	if err := CachesSynced(syncer(true))(req); err != nil {
		t.Fatalf("synced caches read not ready: %v", err)
	}
}
