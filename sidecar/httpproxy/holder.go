package httpproxy

import (
	"context"
	"net/http"
	"strings"
	"time"
)

// FunctionRef names a function cluster and carries its weft.dev/function metadata, so a
// Holder can bound the hold without reading config itself.
type FunctionRef struct {
	Namespace, Name      string
	Cluster              string
	HoldTimeout          time.Duration
	MaxPending           int
	ContainerConcurrency int
}

// Holder holds a request for a function that has no ready endpoint until one arrives.
type Holder interface {
	// Hold blocks until the function has a ready endpoint, ctx ends, or the hold is refused
	// (queue full, hold timeout). On success it returns a release func the proxy calls when
	// the request completes, and how long the request waited. On refusal the error's
	// message becomes the 503 body, and if the error implements
	// interface{ RetryAfter() time.Duration } that becomes the Retry-After header.
	Hold(ctx context.Context, fn FunctionRef) (release func(), waited time.Duration, err error)
}

// EndpointWatcher learns, on every config swap, how many HEALTHY endpoints each cluster
// has; the activator uses it to wake held requests when endpoints arrive.
type EndpointWatcher interface {
	ClusterEndpointsChanged(cluster string, ready int)
}

// EndpointWatcherFunc adapts a function to EndpointWatcher.
type EndpointWatcherFunc func(cluster string, ready int)

// ClusterEndpointsChanged calls f.
func (f EndpointWatcherFunc) ClusterEndpointsChanged(cluster string, ready int) { f(cluster, ready) }

// AsyncCaller takes calls to a function that are to run asynchronously (the function is
// async by default, or the caller sent "Prefer: respond-async"): it queues the call and
// answers 202 itself. It sees the request before any hold: a queued call needs no ready
// endpoint, and its backlog is what scales the function up.
type AsyncCaller interface {
	ServeAsync(w http.ResponseWriter, r *http.Request, namespace, name string)
}

// prefersAsync reports whether a request asks to be answered asynchronously (RFC 7240).
func prefersAsync(h http.Header) bool {
	for _, v := range h.Values("Prefer") {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), "respond-async") {
				return true
			}
		}
	}
	return false
}
