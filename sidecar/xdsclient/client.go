// Package xdsclient speaks the xDS aggregated discovery protocol (state of the world, ADS)
// to the Weft control plane and turns what it receives into one validated, immutable
// *config.Config.
//
// It ACKs every response it accepts and NACKs (same nonce, previous version,
// error_detail naming the field) every response that contains something the sidecar cannot
// serve faithfully. It subscribes make-before-break — CDS then EDS for the clusters, LDS
// then RDS for the listeners — and applies a config only once it is complete. Through a NACK
// or a control-plane outage the last good config keeps serving; the client reconnects with
// jittered exponential back-off and re-sends the versions it holds.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/sidecar/config"
)

// Applier receives each new complete config, in order, from the client's goroutine.
type Applier interface {
	Apply(cfg *config.Config)
}

// ApplierFunc adapts a function to Applier.
type ApplierFunc func(*config.Config)

// Apply calls f.
func (f ApplierFunc) Apply(c *config.Config) { f(c) }

// Options configure a Client.
type Options struct {
	Address string
	Node    *corev3.Node
	Applier Applier
	Clock   clock.Clock
	Logger  *slog.Logger
	// BackoffBase and BackoffMax bound the reconnect delay (defaults DefaultBackoffBase
	// and DefaultBackoffMax).
	BackoffBase, BackoffMax time.Duration
	// DialOptions authenticate the connection (Credentials); empty is plaintext without a
	// token, which only a control plane run with --xds-insecure accepts.
	DialOptions []grpc.DialOption
}

// Reconnect back-off. A sidecar that lost its control plane keeps serving its last good
// config, but it learns of no endpoint change until it is back, so every second it
// reconnects late is a second of traffic sent to pods that are gone. Envoy's default for
// an xDS stream is 500 ms to 30 s and grpc-go's xDS client uses 1 s to 120 s; both let a
// sidecar come back 15 s or more after a 30 s outage (issue 12). Weft starts at 250 ms and
// caps the delay at 2 s, full-jittered: after an outage of any length a sidecar is back
// within 2.125 s of the control plane (about 1 s on average), and 10,000 sidecars knock at
// a dead control plane about 9,000 times a second, each a cheap refused connect. The
// delay resets once a stream has delivered a response, as grpc-go's xDS client does, so a
// stream that opens but is cut before any config keeps backing off.
const (
	DefaultBackoffBase = 250 * time.Millisecond
	DefaultBackoffMax  = 2 * time.Second
	// connectTimeout bounds one TCP+HTTP/2 connect to the control plane (gRPC's own default
	// is 20 s); an address that does not answer is tried again after the back-off instead.
	connectTimeout = 3 * time.Second
	// MaxResponseBytes bounds one xDS response. gRPC's default of 4 MiB is too small for a
	// large mesh: at 10,000 routes the full EDS response is 5.0 MB (21,000 assignments,
	// BenchmarkEDSFanOut) and CDS is larger; 64 MiB leaves room for ten times that.
	MaxResponseBytes = 64 << 20
)

// Status is what /config_dump shows about the xDS session.
type Status struct {
	Connected bool              `json:"connected"`
	Versions  map[string]string `json:"versions"`
	// LastNACK is the error detail of the most recent rejected response per type.
	LastNACK map[string]string `json:"lastNack,omitempty"`
	Pending  string            `json:"pending,omitempty"`
	// Rejected lists listeners whose resources were each accepted but do not make a
	// servable listener together; each keeps its last good version (or is not started).
	Rejected []string `json:"rejected,omitempty"`
}

// Client is an ADS client. Create it with New and start it with Run.
type Client struct {
	opts    Options
	current atomic.Pointer[config.Config]

	// Session state, owned by the Run goroutine.
	res         config.Resources
	versions    map[string]string
	nonces      map[string]string
	subs        map[string][]string // EDS and RDS subscriptions
	nacked      map[string]string   // type URL → version last rejected
	nackRepeats map[string]int
	delayed     map[string]*delayedNACK
	// fullAsked is the EDS version whose ACK last claimed no version, to get the full set.
	fullAsked string

	mu     sync.Mutex
	status Status
}

// New returns a client; it does nothing until Run.
func New(opts Options) *Client {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = DefaultBackoffBase
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = DefaultBackoffMax
	}
	return &Client{opts: opts, res: config.Resources{}, versions: map[string]string{},
		nacked: map[string]string{}, nackRepeats: map[string]int{}, delayed: map[string]*delayedNACK{},
		status: Status{Versions: map[string]string{}, LastNACK: map[string]string{}}}
}

// Current returns the config in force, or nil before the first complete one.
func (c *Client) Current() *config.Config { return c.current.Load() }

// Status returns a copy of the session status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{Connected: c.status.Connected, Pending: c.status.Pending, Rejected: slices.Clone(c.status.Rejected),
		Versions: map[string]string{}, LastNACK: map[string]string{}}
	for k, v := range c.status.Versions {
		s.Versions[k] = v
	}
	for k, v := range c.status.LastNACK {
		s.LastNACK[k] = v
	}
	return s
}

// Run keeps an ADS stream open until ctx ends, reconnecting with jittered exponential
// back-off. It returns ctx.Err().
func (c *Client) Run(ctx context.Context) error {
	// The channel has its own reconnect back-off under the stream's (grpc-go's default: 1 s
	// growing 1.6× to 120 s), which alone kept sidecars away 14 s after a 31 s outage: it
	// gets the same bounds as the stream.
	dial := c.opts.DialOptions
	if len(dial) == 0 {
		dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(c.opts.Address, append(slices.Clone(dial),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: c.opts.BackoffBase, Multiplier: 1.6, Jitter: 0.2, MaxDelay: c.opts.BackoffMax},
			MinConnectTimeout: connectTimeout,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxResponseBytes)))...)
	if err != nil {
		return fmt.Errorf("dialing xDS server %s: %w", c.opts.Address, err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	attempt := 0
	for {
		got, err := c.session(ctx, ads)
		c.setConnected(false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if got {
			attempt = 0
		}
		d := backoff(c.opts.BackoffBase, c.opts.BackoffMax, attempt)
		attempt++
		c.opts.Logger.Info("xDS stream ended; reconnecting", "address", c.opts.Address, "err", err, "after", d)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.opts.Clock.After(d):
		}
	}
}

// backoff is "full jitter": a uniform delay in [0, min(max, base·2^attempt)), so many
// sidecars that lost the same control plane do not reconnect in lock step.
func backoff(base, max time.Duration, attempt int) time.Duration {
	ceil := base << min(attempt, 20)
	if ceil > max || ceil <= 0 {
		ceil = max
	}
	return base/2 + time.Duration(rand.Int64N(int64(ceil)))
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.status.Connected = v
	c.mu.Unlock()
}

// session runs one stream; got reports whether any response arrived.
func (c *Client) session(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (got bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ads.StreamAggregatedResources(sctx)
	if err != nil {
		return false, fmt.Errorf("opening ADS stream: %w", err)
	}
	c.nonces = map[string]string{} // nonces do not survive a reconnect
	// Wildcard subscriptions first; EDS/RDS follow once their parents are known, but on a
	// reconnect we re-send what we already hold so the server can skip unchanged versions.
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := c.send(stream, t, nil, c.versions[t], nil); err != nil {
			return false, err
		}
	}
	for _, t := range []string{resourcev3.EndpointType, resourcev3.RouteType, resourcev3.SecretType} {
		if len(c.subs[t]) > 0 {
			if err := c.send(stream, t, c.requestNames(t), c.versions[t], nil); err != nil {
				return false, err
			}
		}
	}
	type recvd struct {
		resp *discoveryv3.DiscoveryResponse
		err  error
	}
	recv := make(chan recvd, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			select {
			case recv <- recvd{resp, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	c.delayed = map[string]*delayedNACK{}
	for {
		var timer <-chan time.Time
		var due *delayedNACK
		for _, d := range c.delayed {
			if due == nil || d.at.Before(due.at) {
				due = d
			}
		}
		if due != nil {
			timer = c.opts.Clock.After(due.at.Sub(c.opts.Clock.Now()))
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-timer:
			delete(c.delayed, due.typeURL)
			if c.nonces[due.typeURL] == due.nonce {
				if err := c.send(stream, due.typeURL, c.requestNames(due.typeURL), c.versions[due.typeURL], due.err); err != nil {
					return got, err
				}
			}
		case r := <-recv:
			if r.err != nil {
				return got, fmt.Errorf("receiving from ADS stream: %w", r.err)
			}
			if !got {
				got = true
				c.setConnected(true)
			}
			if err := c.handle(stream, r.resp); err != nil {
				return got, err
			}
		}
	}
}

// delayedNACK is a NACK held back because the server re-sent a version this client had
// already rejected. Some servers (go-control-plane's snapshot cache among them) answer a
// NACK by re-sending the same resources at once; NACKing each copy immediately would spin
// both sides in a tight loop, so repeats back off exponentially up to BackoffMax.
type delayedNACK struct {
	typeURL, nonce string
	err            error
	at             time.Time
}

func (c *Client) send(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient,
	typeURL string, names []string, version string, nack error) error {
	req := &discoveryv3.DiscoveryRequest{
		Node:          c.opts.Node,
		TypeUrl:       typeURL,
		VersionInfo:   version,
		ResourceNames: names,
		ResponseNonce: c.nonces[typeURL],
	}
	if nack != nil {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	if err := stream.Send(req); err != nil {
		return fmt.Errorf("sending %s request: %w", typeURL, err)
	}
	return nil
}

func (c *Client) handle(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discoveryv3.DiscoveryResponse) error {
	t := resp.GetTypeUrl()
	c.nonces[t] = resp.GetNonce()
	decoded, err := decodeResponse(resp)
	if err != nil {
		c.opts.Logger.Warn("rejecting xDS response", "type", t, "version", resp.GetVersionInfo(), "err", err)
		c.mu.Lock()
		c.status.LastNACK[t] = err.Error()
		c.mu.Unlock()
		if c.nacked[t] != resp.GetVersionInfo() {
			c.nacked[t] = resp.GetVersionInfo()
			c.nackRepeats[t] = 0
			return c.send(stream, t, c.requestNames(t), c.versions[t], err)
		}
		c.nackRepeats[t]++
		d := min(c.opts.BackoffBase<<min(c.nackRepeats[t], 20), c.opts.BackoffMax, 5*time.Second)
		c.delayed[t] = &delayedNACK{typeURL: t, nonce: resp.GetNonce(), err: err, at: c.opts.Clock.Now().Add(d)}
		return nil
	}
	ackVersion := resp.GetVersionInfo()
	switch t {
	case resourcev3.ClusterType, resourcev3.ListenerType:
		c.res[t] = decoded // state of the world: absence means deletion
	case resourcev3.EndpointType:
		// A wildcard subscription: a response carries the assignments that changed, and
		// every one received is kept until an accepted CDS response stops naming its
		// cluster (resubscribe), so one that arrives before its cluster is not lost.
		if c.res[t] == nil {
			c.res[t] = map[string]proto.Message{}
		}
		for n, m := range decoded {
			c.res[t][n] = m
		}
		// Should the server hold back an assignment this client lacks (it cannot tell
		// what the client dropped), claiming no version asks for the full set — once
		// per version, so an assignment the server does not have cannot loop.
		if c.missingEndpoints() && c.fullAsked != ackVersion {
			c.fullAsked = ackVersion
			ackVersion = ""
		}
	default:
		merged := map[string]proto.Message{}
		for n, m := range c.res[t] {
			if slices.Contains(c.subs[t], n) {
				merged[n] = m
			}
		}
		for n, m := range decoded {
			merged[n] = m
		}
		c.res[t] = merged
	}
	c.versions[t] = ackVersion
	delete(c.nacked, t)
	delete(c.delayed, t)
	c.mu.Lock()
	c.status.Versions[t] = resp.GetVersionInfo()
	delete(c.status.LastNACK, t)
	c.mu.Unlock()
	if t == resourcev3.ClusterType || t == resourcev3.ListenerType {
		if err := c.resubscribe(stream); err != nil {
			return err
		}
	}
	// The ACK goes once the config is in force: the control plane's hand-off (Drained)
	// takes an ACK of draining endpoints to mean this sidecar no longer sends new requests
	// to them.
	c.tryApply()
	return c.send(stream, t, c.requestNames(t), c.versions[t], nil)
}

// edsWildcard is the EDS subscription: every assignment of the sidecar's view. With
// resource names, each ACK would carry all of them — 21,000 names, ~1.2 MB, decoded by
// the control plane for every sidecar on every endpoint change at 10,000 routes
// (docs/eds-fast-path.md); a wildcard ACK is a few bytes. It is the legacy wildcard (no
// names), which go-control-plane's snapshot cache in ADS mode serves too (it refuses an
// explicit "*" it holds no resource of), so a sidecar also works with an older manager.
var edsWildcard []string

// requestNames are the resource names a request of type t carries.
func (c *Client) requestNames(t string) []string {
	if t == resourcev3.EndpointType && len(c.subs[t]) > 0 {
		return edsWildcard
	}
	return c.subs[t]
}

// missingEndpoints reports whether a cluster this client holds lacks its assignment.
func (c *Client) missingEndpoints() bool {
	for _, n := range c.subs[resourcev3.EndpointType] {
		if _, ok := c.res[resourcev3.EndpointType][n]; !ok {
			return true
		}
	}
	return false
}

// resubscribe sends EDS/RDS/SDS requests when the set of names the clusters and listeners
// need changed, and forgets resources nobody references any more (a secret no resource
// names is dropped from memory at once).
func (c *Client) resubscribe(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient) error {
	rds, eds := config.Subscriptions(c.res)
	sds := config.SecretSubscriptions(c.res)
	if c.subs == nil {
		c.subs = map[string][]string{}
	}
	for _, s := range []struct {
		t     string
		names []string
	}{{resourcev3.EndpointType, eds}, {resourcev3.RouteType, rds}, {resourcev3.SecretType, sds}} {
		if slices.Equal(c.subs[s.t], s.names) {
			continue
		}
		had := len(c.subs[s.t]) > 0
		c.subs[s.t] = s.names
		keep := make(map[string]bool, len(s.names))
		for _, n := range s.names {
			keep[n] = true
		}
		for n := range c.res[s.t] {
			if !keep[n] {
				delete(c.res[s.t], n)
			}
		}
		if s.t == resourcev3.EndpointType && had && len(s.names) > 0 {
			continue // the wildcard request stands
		}
		if err := c.send(stream, s.t, c.requestNames(s.t), c.versions[s.t], nil); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) tryApply() {
	cfg, err := config.Build(c.res, c.versions)
	var inc *config.IncompleteError
	c.mu.Lock()
	if errors.As(err, &inc) {
		c.status.Pending = err.Error()
	} else {
		c.status.Pending = ""
	}
	c.mu.Unlock()
	if err != nil {
		if inc == nil {
			c.opts.Logger.Error("building config from accepted resources", "err", err)
		}
		return
	}
	rejected := c.keepLastGood(cfg)
	c.mu.Lock()
	c.status.Rejected = rejected
	c.mu.Unlock()
	c.current.Store(cfg)
	if c.opts.Applier != nil {
		c.opts.Applier.Apply(cfg)
	}
}

// keepLastGood replaces each Redis listener the build could not decode with its version
// from the config in force, or leaves it out if there is none, so one listener's bad
// combination of resources holds back that listener only. It returns the reasons.
func (c *Client) keepLastGood(cfg *config.Config) []string {
	var reasons []string
	prev := c.current.Load()
	kept := cfg.RedisListeners[:0]
	for _, rl := range cfg.RedisListeners {
		if rl.Err == nil {
			kept = append(kept, rl)
			continue
		}
		reasons = append(reasons, rl.Err.Error())
		var last *config.RedisListener
		if prev != nil {
			for _, p := range prev.RedisListeners {
				if p.Listener.GetName() == rl.Listener.GetName() {
					last = p
				}
			}
		}
		if last != nil {
			kept = append(kept, last)
			c.opts.Logger.Error("redis listener not updated; keeping its last good version", "listener", rl.Listener.GetName(), "err", rl.Err)
		} else {
			c.opts.Logger.Error("redis listener not started", "listener", rl.Listener.GetName(), "err", rl.Err)
		}
	}
	cfg.RedisListeners = kept
	return reasons
}

// decodeResponse unpacks and validates every resource; any failure rejects the response
// as a whole, as Envoy and gRPC do.
func decodeResponse(resp *discoveryv3.DiscoveryResponse) (map[string]proto.Message, error) {
	out := map[string]proto.Message{}
	for _, a := range resp.GetResources() {
		if a.GetTypeUrl() != resp.GetTypeUrl() {
			return nil, fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), resp.GetTypeUrl())
		}
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			return nil, fmt.Errorf("decoding %s resource: %w", a.GetTypeUrl(), err)
		}
		name := resourceName(m)
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("duplicate %s resource %q in one response", resp.GetTypeUrl(), name)
		}
		if err := config.Validate(resp.GetTypeUrl(), m); err != nil {
			return nil, err
		}
		out[name] = m
	}
	return out, nil
}

func resourceName(m proto.Message) string {
	type named interface{ GetName() string }
	type clusterNamed interface{ GetClusterName() string }
	if n, ok := m.(clusterNamed); ok {
		return n.GetClusterName()
	}
	if n, ok := m.(named); ok {
		return n.GetName()
	}
	return ""
}
