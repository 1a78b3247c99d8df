package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/activator"
	"github.com/weftmesh/weft/sidecar/httpproxy"
)

// holder adapts the activator to the proxy's Holder seam.
type holder struct{ act *activator.Activator }

func (h holder) Hold(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error) {
	return h.act.Hold(ctx, activator.FunctionRef{
		Namespace: fn.Namespace, Name: fn.Name, Cluster: fn.Cluster,
		HoldTimeout: fn.HoldTimeout, MaxPending: fn.MaxPending, ContainerConcurrency: fn.ContainerConcurrency,
	})
}

// HoldTimedOut counts a call the function's sidecar refused because its app had not
// started within the hold (httpproxy.HoldTimeoutRecorder).
func (h holder) HoldTimedOut(fn httpproxy.FunctionRef) {
	h.act.TimedOut(activator.FunctionRef{Namespace: fn.Namespace, Name: fn.Name, Cluster: fn.Cluster, HoldTimeout: fn.HoldTimeout})
}

// activatorStats adapts the activator's WritePrometheus to the admin StatsWriter seam.
type activatorStats struct{ act *activator.Activator }

func (s activatorStats) WritePrometheus(w io.Writer) { _ = s.act.WritePrometheus(w) }

// dialSignals opens the connection demand pokes and stats travel on: the manager serves them
// on the same gRPC port as ADS. The connection is lazy: a manager that is down only delays
// signals, it never blocks the data path. dial authenticates it as the ADS stream is
// (xdsclient.Credentials).
func dialSignals(address string, dial []grpc.DialOption) (*grpc.ClientConn, error) {
	return grpc.NewClient(address, dial...)
}

// statsSampler turns the inbound listener's counters into the per-second reports Knative's
// queue-proxy sends: average concurrency (time-weighted by sampling every 100 ms), requests
// in the second, and requests in flight at its end.
type statsSampler struct {
	rep        *activator.Reporter
	listener   func() *httpproxy.Listener
	namespace  string
	name, pod  string
	clock      clock.WithTicker
	log        *slog.Logger
	lastTotal  uint64
	sum        float64
	samples    int
	haveTotals bool
}

const (
	samplePeriod = 100 * time.Millisecond
	reportPeriod = time.Second
)

// newStatsSampler reports for function "<ns>/<name>" served by pod.
func newStatsSampler(rep *activator.Reporter, function, pod string, listener func() *httpproxy.Listener, log *slog.Logger) *statsSampler {
	ns, name, _ := strings.Cut(function, "/")
	return &statsSampler{rep: rep, listener: listener, namespace: ns, name: name, pod: pod, clock: clock.RealClock{}, log: log}
}

// Run samples until ctx ends.
func (s *statsSampler) Run(ctx context.Context) {
	sample := s.clock.NewTicker(samplePeriod)
	defer sample.Stop()
	report := s.clock.NewTicker(reportPeriod)
	defer report.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sample.C():
			if l := s.listener(); l != nil {
				inflight, _ := l.Stats()
				s.sum += float64(inflight)
				s.samples++
			}
		case <-report.C():
			s.flush(ctx)
		}
	}
}

func (s *statsSampler) flush(ctx context.Context) {
	l := s.listener()
	if l == nil {
		return
	}
	inflight, total := l.Stats()
	stat := contract.PodStat{Namespace: s.namespace, Name: s.name, Pod: s.pod, InFlight: inflight}
	if s.samples > 0 {
		stat.Concurrency = s.sum / float64(s.samples)
	}
	if s.haveTotals {
		stat.Requests = float64(total - s.lastTotal)
	}
	s.lastTotal, s.haveTotals = total, true
	s.sum, s.samples = 0, 0
	rctx, cancel := context.WithTimeout(ctx, reportPeriod)
	defer cancel()
	if err := s.rep.Report(rctx, []contract.PodStat{stat}); err != nil {
		s.log.Debug("stats report failed", "err", err)
	}
}
