package queue

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/weftmesh/weft/contract"
)

// The queue's per-function gauges, on controller-runtime's registry (the manager's metrics
// endpoint). They are read from JetStream's stream state once per PendingWatcher poll (2 s
// by default), never per message. A function with nothing held has no series.
var (
	pendingMessages = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_queue_pending_messages",
		Help: "Asynchronous calls held in WEFT_CALLS for the function: waiting, running or waiting for a retry.",
	}, []string{"namespace", "name"})
	deadLetters = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_queue_dead_letters",
		Help: "Dead-lettered calls of the function held in WEFT_DEAD (kept 7 days by default, until redriven or deleted).",
	}, []string{"namespace", "name"})
)

func init() {
	metrics.Registry.MustRegister(pendingMessages, deadLetters)
}

// MaxFunctionSeries bounds the series of each queue gauge. Subjects come from any identity
// that may call functions (weft.calls.>), not from MeshFunctions, so a publisher could
// invent functions; past this many, the functions with the largest counts are kept.
const MaxFunctionSeries = 1000

// gaugeSet keeps one gauge's series in step with the latest counts.
type gaugeSet struct {
	vec  *prometheus.GaugeVec
	have map[FunctionKey]bool
}

// set publishes cur, deleting the series of functions no longer in it, and reports how many
// functions were left out by MaxFunctionSeries.
func (g *gaugeSet) set(cur map[FunctionKey]int) (dropped int) {
	keys := slices.Collect(maps.Keys(cur))
	if len(keys) > MaxFunctionSeries {
		slices.SortFunc(keys, func(a, b FunctionKey) int {
			return cmp.Or(cmp.Compare(cur[b], cur[a]), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
		dropped, keys = len(keys)-MaxFunctionSeries, keys[:MaxFunctionSeries]
	}
	next := make(map[FunctionKey]bool, len(keys))
	for _, fn := range keys {
		g.vec.WithLabelValues(fn.Namespace, fn.Name).Set(float64(cur[fn]))
		next[fn] = true
	}
	for fn := range g.have {
		if !next[fn] {
			g.vec.DeleteLabelValues(fn.Namespace, fn.Name)
		}
	}
	g.have = next
	return dropped
}

// DeadLetters returns the number of dead-lettered calls held per function in WEFT_DEAD.
// Functions with none are absent.
func DeadLetters(ctx context.Context, js StreamGetter) (map[FunctionKey]int, error) {
	s, err := js.Stream(ctx, contract.DeadStream)
	if err != nil {
		return nil, fmt.Errorf("looking up stream %s: %w", contract.DeadStream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(contract.DeadPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("reading dead letters of stream %s: %w", contract.DeadStream, err)
	}
	out := make(map[FunctionKey]int, len(info.State.Subjects))
	for subj, n := range info.State.Subjects {
		// A dead subject is weft.dead.<namespace>.<name>: parse it as the calls subject
		// of the same function.
		rest, ok := strings.CutPrefix(subj, contract.DeadPrefix)
		if !ok {
			continue
		}
		if ns, name, ok := contract.FunctionFromSubject(contract.CallsPrefix + rest); ok && n > 0 {
			out[FunctionKey{ns, name}] += int(n)
		}
	}
	return out, nil
}
