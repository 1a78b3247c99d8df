package xds

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/contract"
)

// The review cache holds at most maxCachedReviews entries whatever clients send, drops
// expired entries first, and never trusts an entry past its token's expiry.
func TestReviewCacheIsBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := NewAuthenticator(nil, clocktesting.NewFakeClock(now))
	short := &Identity{Pod: "short", Expiry: now.Add(time.Second)}
	a.remember(sha256.Sum256([]byte("short")), short, now)
	if c := a.cache[sha256.Sum256([]byte("short"))]; !c.until.Equal(short.Expiry) {
		t.Fatalf("cached until %v, past the token's expiry %v", c.until, short.Expiry)
	}
	later := now.Add(2 * time.Second) // "short" has expired
	for i := range 3 * maxCachedReviews {
		a.remember(sha256.Sum256([]byte(fmt.Sprint(i))), &Identity{Pod: fmt.Sprint(i), Expiry: later.Add(time.Hour)}, later)
		if len(a.cache) > maxCachedReviews {
			t.Fatalf("cache grew to %d entries (bound %d)", len(a.cache), maxCachedReviews)
		}
	}
	if _, ok := a.cache[sha256.Sum256([]byte("short"))]; ok {
		t.Error("an expired entry outlived eviction")
	}
}

// Malformed bearer metadata is refused before anything reaches the API server (the
// Authenticator has no client here: a review would panic).
func TestBearerRefusals(t *testing.T) {
	a := NewAuthenticator(nil, nil)
	for name, md := range map[string]metadata.MD{
		"none":      {},
		"two":       {contract.AuthorizationHeader: {"Bearer a", "Bearer b"}},
		"basic":     {contract.AuthorizationHeader: {"Basic dXNlcjpwdw=="}},
		"empty":     {contract.AuthorizationHeader: {"Bearer "}},
		"oversized": {contract.AuthorizationHeader: {"Bearer " + strings.Repeat("a", maxTokenBytes+1)}},
	} {
		_, err := a.Authenticate(metadata.NewIncomingContext(context.Background(), md))
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: %v, want Unauthenticated", name, err)
		}
	}
}

func TestTokenExpiry(t *testing.T) {
	jwt := func(payload string) string {
		return "h." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".s"
	}
	if exp, err := tokenExpiry(jwt(`{"exp":1800000000}`)); err != nil || exp.Unix() != 1_800_000_000 {
		t.Errorf("exp = %v, %v", exp, err)
	}
	for _, tok := range []string{jwt(`{}`), jwt(`{"exp":-1}`), jwt(`not json`), "a.b", "h.!!!.s"} {
		if _, err := tokenExpiry(tok); err == nil {
			t.Errorf("tokenExpiry(%q) accepted it", tok)
		}
	}
}
