package xds

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
)

// Keys of a bound ServiceAccount token's TokenReview extra fields: the pod it is bound to.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// Bounds of the review cache. A verified token is trusted without asking the API server
// again for at most reviewTTL (and never past its own expiry), so a deleted pod or a
// revoked token is noticed within a minute on a new stream; maxCachedReviews entries of
// about 1 KiB each cap the cache at ~4 MiB whatever a client sends (a flood of forged
// tokens is never cached: only successful reviews are).
const (
	reviewTTL        = time.Minute
	maxCachedReviews = 4096
	// maxTokenBytes refuses an oversized bearer before it is sent to the API server.
	maxTokenBytes = 16 << 10
)

// Identity is what the manager verified about a sidecar: the pod its token is bound to,
// as the API server has it. Nothing in it comes from what the sidecar claims.
type Identity struct {
	Namespace      string
	ServiceAccount string
	Pod            string
	UID            types.UID
	Labels         map[string]string
	// View is the snapshot view derived from the pod (viewOfPod).
	View snapshot.View
	// Expiry is when the token stops being valid; a stream authenticated by it ends then.
	Expiry time.Time
}

// NodeID is the only node ID the sidecar may use: <pod>.<namespace>.
func (id *Identity) NodeID() string { return id.Pod + "." + id.Namespace }

// Function is the "<namespace>/<name>" of the MeshFunction the pod serves, or "".
func (id *Identity) Function() string { return id.View.Function }

type identityKey struct{}

// IdentityFrom returns the verified identity the authentication interceptors put in ctx.
func IdentityFrom(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*Identity)
	return id, ok
}

// WithIdentity returns ctx carrying id (the interceptors use it; tests of handlers may too).
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// Authenticator verifies the bearer token a sidecar presents with the TokenReview API and
// reads its pod from the API server. It serves both the ADS streams and the signal service.
type Authenticator struct {
	// Client creates TokenReviews and reads Pods (an uncached reader: the manager does not
	// watch every pod of the cluster).
	client client.Client
	clock  clock.Clock

	mu    sync.Mutex
	cache map[[32]byte]cachedReview
}

type cachedReview struct {
	id    *Identity
	until time.Time
}

// NewAuthenticator returns an Authenticator that asks c (which must be able to create
// tokenreviews and get pods) and uses clk for expiry.
func NewAuthenticator(c client.Client, clk clock.Clock) *Authenticator {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Authenticator{client: c, clock: clk, cache: map[[32]byte]cachedReview{}}
}

// errUnauthenticated builds the status every refusal carries: what is wrong and what to do.
func errUnauthenticated(format string, args ...any) error {
	return status.Errorf(codes.Unauthenticated, "weft control plane: "+format, args...)
}

// bearer extracts the token of the authorization metadata of ctx.
func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(contract.AuthorizationHeader)
	if len(vals) != 1 {
		return "", errUnauthenticated("no bearer token: a sidecar presents its projected ServiceAccount token (audience %s) as %q metadata", contract.TokenAudience, contract.AuthorizationHeader)
	}
	tok, ok := strings.CutPrefix(vals[0], contract.BearerPrefix)
	if !ok || tok == "" {
		return "", errUnauthenticated("authorization metadata is not %q followed by a token", contract.BearerPrefix)
	}
	if len(tok) > maxTokenBytes {
		return "", errUnauthenticated("token of %d bytes is larger than the %d bytes allowed", len(tok), maxTokenBytes)
	}
	return tok, nil
}

// Authenticate verifies the bearer token of ctx and returns the identity of its pod.
func (a *Authenticator) Authenticate(ctx context.Context) (*Identity, error) {
	tok, err := bearer(ctx)
	if err != nil {
		return nil, err
	}
	key := sha256.Sum256([]byte(tok))
	now := a.clock.Now()
	a.mu.Lock()
	c, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.id, nil
	}
	id, err := a.review(ctx, tok, now)
	if err != nil {
		return nil, err
	}
	a.remember(key, id, now)
	return id, nil
}

// remember caches id until reviewTTL or its token's expiry, whichever is first. A full
// cache first drops expired entries, then (all still valid: more than maxCachedReviews
// pods connected within a minute) an arbitrary one, which only costs a review.
func (a *Authenticator) remember(key [32]byte, id *Identity, now time.Time) {
	c := cachedReview{id: id, until: now.Add(reviewTTL)}
	if id.Expiry.Before(c.until) {
		c.until = id.Expiry
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= maxCachedReviews {
		for k, v := range a.cache {
			if !now.Before(v.until) {
				delete(a.cache, k)
			}
		}
		for k := range a.cache {
			if len(a.cache) < maxCachedReviews {
				break
			}
			delete(a.cache, k)
		}
	}
	a.cache[key] = c
}

// review asks the API server about tok and reads the pod it is bound to.
func (a *Authenticator) review(ctx context.Context, tok string, now time.Time) (*Identity, error) {
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{contract.TokenAudience}}}
	if err := a.client.Create(ctx, tr); err != nil {
		return nil, status.Errorf(codes.Unavailable, "weft control plane: reviewing the token with the API server: %v", err)
	}
	st := tr.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return nil, errUnauthenticated("token refused by the API server (%s): mount a fresh projected ServiceAccount token with audience %s", msg, contract.TokenAudience)
	}
	if !slices.Contains(st.Audiences, contract.TokenAudience) {
		return nil, errUnauthenticated("token is not for audience %s", contract.TokenAudience)
	}
	parts := strings.Split(st.User.Username, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" {
		return nil, errUnauthenticated("token of %q is not a ServiceAccount's", st.User.Username)
	}
	ns, sa := parts[2], parts[3]
	podName, podUID := one(st.User.Extra[extraPodName]), one(st.User.Extra[extraPodUID])
	if podName == "" || podUID == "" {
		return nil, errUnauthenticated("token of ServiceAccount %s/%s is not bound to a pod: use a projected serviceAccountToken volume", ns, sa)
	}
	exp, err := tokenExpiry(tok)
	if err != nil {
		return nil, errUnauthenticated("token: %v", err)
	}
	if !now.Before(exp) {
		return nil, errUnauthenticated("token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	pod := &corev1.Pod{}
	if err := a.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: podName}, pod); err != nil {
		return nil, errUnauthenticated("reading pod %s/%s of the token: %v", ns, podName, err)
	}
	if string(pod.UID) != podUID {
		return nil, errUnauthenticated("pod %s/%s is not the one the token is bound to (uid %s, token's %s)", ns, podName, pod.UID, podUID)
	}
	if got := serviceAccountOf(pod); got != sa {
		return nil, errUnauthenticated("pod %s/%s runs as ServiceAccount %s, the token is %s's", ns, podName, got, sa)
	}
	return &Identity{Namespace: ns, ServiceAccount: sa, Pod: podName, UID: pod.UID, Labels: pod.Labels,
		View: viewOfPod(pod), Expiry: exp}, nil
}

func one(v authnv1.ExtraValue) string {
	if len(v) != 1 {
		return ""
	}
	return v[0]
}

func serviceAccountOf(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// tokenExpiry reads the exp claim of a JWT the API server has just verified (so its
// signature needs no second check). A token without one never expires, which bound tokens
// always do: it is refused.
func tokenExpiry(tok string) (time.Time, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("not a JWT")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, fmt.Errorf("JWT payload: %w", err)
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if err := json.Unmarshal(raw, &claims); err != nil {
		return time.Time{}, fmt.Errorf("JWT payload: %w", err)
	}
	if claims.Exp <= 0 {
		return time.Time{}, errors.New("no expiry (exp); use a projected token with expirationSeconds")
	}
	return time.Unix(claims.Exp, 0), nil
}

// UnaryInterceptor authenticates every unary call (the signal service) and puts the
// identity in its context.
func (a *Authenticator) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, err := a.Authenticate(ctx)
		if err != nil {
			return nil, err
		}
		return h(WithIdentity(ctx, id), req)
	}
}

// StreamInterceptor authenticates every stream (ADS) and ends it with Unauthenticated when
// its token expires: the sidecar reconnects with the token the kubelet has rotated by then
// (at 80 % of its lifetime), and is verified again.
func (a *Authenticator) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		id, err := a.Authenticate(ss.Context())
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancelCause(WithIdentity(ss.Context(), id))
		defer cancel(nil)
		t := a.clock.NewTimer(id.Expiry.Sub(a.clock.Now()))
		defer t.Stop()
		go func() {
			select {
			case <-t.C():
				cancel(errTokenExpired)
			case <-ctx.Done():
			}
		}()
		err = h(srv, &identityStream{ServerStream: ss, ctx: ctx})
		if errors.Is(context.Cause(ctx), errTokenExpired) {
			return errUnauthenticated("token expired during the stream; reconnect with the rotated token")
		}
		return err
	}
}

var errTokenExpired = errors.New("token expired")

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// RecvMsg returns when a message arrives or the token expires, whichever is first:
// go-control-plane's state-of-the-world loop watches only its server's context, so an
// expired stream ends by failing its next receive. The receive still pending then returns
// once gRPC closes the stream; the handler never reads m again.
func (s *identityStream) RecvMsg(m any) error {
	done := make(chan error, 1)
	go func() { done <- s.ServerStream.RecvMsg(m) }()
	select {
	case err := <-done:
		return err
	case <-s.ctx.Done():
		return errUnauthenticated("token expired during the stream; reconnect with the rotated token")
	}
}
