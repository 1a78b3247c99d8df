package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/config"
)

// queueCluster is the cluster whose metadata says where the async queue is (see
// docs/xds-contract.md).
const queueCluster = contract.QueueClusterName

// asyncCalls connects the sidecar to the async queue the control plane names: it publishes
// callers' async calls (the outbound proxy's AsyncCaller), and in a function's pod it runs the
// consumer that feeds queued calls to the local app. Without a queue in the config, async
// calls get 503 saying so.
type asyncCalls struct {
	log      *slog.Logger
	nodeID   string
	function async.FunctionRef // zero unless this pod serves a function
	revision string            // the pod's weft.dev/revision label, if any
	appURL   string
	appAddr  string
	current  func() *config.Config

	mu       sync.Mutex
	queue    contract.QueueMeta // what the connection was dialled with
	nc       *nats.Conn
	pub      *async.Publisher
	cons     *async.Consumer
	stopCons context.CancelFunc
	consDone chan struct{}
}

func newAsyncCalls(log *slog.Logger, nodeID, function, labels string, appPort int, current func() *config.Config) *asyncCalls {
	a := &asyncCalls{log: log, nodeID: nodeID, current: current, revision: revisionOf(labels)}
	if ns, name, ok := strings.Cut(function, "/"); ok && appPort != 0 {
		a.function = async.FunctionRef{Namespace: ns, Name: name}
		a.appAddr = "127.0.0.1:" + strconv.Itoa(appPort)
		a.appURL = "http://" + a.appAddr
	}
	return a
}

// Apply follows the queue and the pod's own function policy in a new config.
func (a *asyncCalls) Apply(c *config.Config) {
	qc := c.Clusters[queueCluster]
	a.mu.Lock()
	defer a.mu.Unlock()
	if qc == nil || qc.Queue == nil {
		return // keep an existing connection: a config without the queue is transient
	}
	if *qc.Queue != a.queue && async.Renew(a.nc, a.queue, *qc.Queue) {
		// The same identity's next user JWT (renewed, or re-granted by a policy change):
		// the connection reconnects with it and keeps its subscriptions and calls in flight.
		a.queue = *qc.Queue
		a.log.Info("async queue credential renewed", "user", qc.Queue.User)
	}
	if *qc.Queue != a.queue {
		// A new URL or credential (the manager's key rotated): dial again. Calls in
		// flight on the old connection cannot be acked and are redelivered after their ack
		// wait; queued calls stay in the stream.
		a.closeLocked()
		refused := &async.Refusals{}
		nc, js, err := async.Dial(*qc.Queue, a.nodeID, refused)
		if err != nil {
			a.log.Error("connecting to the async queue", "url", qc.Queue.URL, "err", err)
			return
		}
		a.queue, a.nc = *qc.Queue, nc
		a.pub = async.NewPublisher(js, async.FunctionSourceFunc(a.policy), async.PublisherOptions{Refused: refused, Logger: a.log})
		if a.function.Name != "" {
			cfg, _ := a.policy(a.function)
			cons, err := async.NewConsumer(js, async.ConsumerOptions{Function: a.function, Revision: a.revision, AppURL: a.appURL, Config: cfg, Logger: a.log})
			if err != nil {
				a.log.Error("starting the async consumer", "function", a.function.String(), "err", err)
				return
			}
			cons.SetTraffic(a.traffic(c))
			ctx, cancel := context.WithCancel(context.Background())
			a.cons, a.stopCons, a.consDone = cons, cancel, make(chan struct{})
			go func(done chan struct{}) {
				defer close(done)
				// Pull only once the app accepts connections: a call taken before would fail
				// and spend one of its attempts on a pod that is still starting.
				if waitForApp(ctx, a.appAddr) {
					_ = cons.Run(ctx)
				}
			}(a.consDone)
		}
		a.log.Info("async queue connected", "url", qc.Queue.URL, "user", qc.Queue.User, "consumer", a.function.Name != "")
	}
	if a.cons != nil {
		if cfg, ok := a.policyFrom(c, a.function); ok {
			a.cons.SetConfig(cfg)
		}
		a.cons.SetTraffic(a.traffic(c))
	}
}

// traffic is the split of the pod's function in c (its own cluster's metadata), by which
// a revision's pod dispatches queued calls; nil without revisions.
func (a *asyncCalls) traffic(c *config.Config) []contract.RevisionTraffic {
	if cl := c.Clusters[contract.FunctionClusterName(a.function.Namespace, a.function.Name)]; cl != nil && cl.Function != nil {
		return cl.Function.Traffic
	}
	return nil
}

// revisionOf reads weft.dev/revision from the pod's labels (k=v,...).
func revisionOf(labels string) string {
	for kv := range strings.SplitSeq(labels, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(kv), "weft.dev/revision="); ok {
			return v
		}
	}
	return ""
}

// policy is a function's async policy from the config in force; false for an unknown one.
func (a *asyncCalls) policy(fn async.FunctionRef) (async.Config, bool) {
	c := a.current()
	if c == nil {
		return async.Config{}, false
	}
	return a.policyFrom(c, fn)
}

func (a *asyncCalls) policyFrom(c *config.Config, fn async.FunctionRef) (async.Config, bool) {
	cl, ok := c.Clusters[contract.FunctionClusterName(fn.Namespace, fn.Name)]
	if !ok {
		return async.Config{}, false
	}
	if cl.Function == nil {
		return async.DefaultConfig(), true
	}
	if err := cl.Function.PolicyErr; err != nil {
		a.log.Warn("function async policy unreadable; using defaults", "function", fn.String(), "err", err)
	}
	return cl.Function.Policy, true
}

// ServeAsync is the outbound proxy's AsyncCaller.
func (a *asyncCalls) ServeAsync(w http.ResponseWriter, r *http.Request, namespace, name string) {
	a.mu.Lock()
	pub := a.pub
	a.mu.Unlock()
	if pub == nil {
		w.Header().Set("Retry-After", "5")
		http.Error(w, "asynchronous calls are unavailable: this sidecar has no queue yet (the control plane sends it; check the manager's --nats-* flags)", http.StatusServiceUnavailable)
		return
	}
	pub.ServeAsync(w, r, async.FunctionRef{Namespace: namespace, Name: name})
}

// WritePrometheus appends the publisher's and consumer's stats to /stats.
func (a *asyncCalls) WritePrometheus(w io.Writer) {
	a.mu.Lock()
	pub, cons := a.pub, a.cons
	a.mu.Unlock()
	if pub != nil {
		pub.WritePrometheus(w)
	}
	if cons != nil {
		cons.WritePrometheus(w)
	}
}

// Shutdown stops the consumer (its in-flight calls finish within its drain time, the rest go
// back to the queue) and closes the connection.
func (a *asyncCalls) Shutdown(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopCons != nil {
		a.stopCons()
		select {
		case <-a.consDone:
		case <-ctx.Done():
		}
	}
	a.closeLocked()
}

func (a *asyncCalls) closeLocked() {
	if a.stopCons != nil {
		a.stopCons()
		a.stopCons = nil
	}
	if a.nc != nil {
		a.nc.Close()
		a.nc = nil
	}
	a.pub, a.cons, a.queue = nil, nil, contract.QueueMeta{}
}

// waitForApp polls the app's port until it accepts a connection; false if ctx ends first.
func waitForApp(ctx context.Context, addr string) bool {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
}
