package activator

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"

	"github.com/weftmesh/weft/contract"
)

// The signal service (contract.SignalService) carries sidecar → manager signals on the ADS
// port: plain gRPC with JSON bodies, so neither side needs generated code. The manager
// serves it with autoscale.RegisterSignalServer.

func init() { encoding.RegisterCodec(contract.SignalCodec{}) }

// DefaultDemandTimeout bounds one fire-and-forget demand call.
const DefaultDemandTimeout = 2 * time.Second

// Reporter sends stats and demand to the manager over an existing gRPC
// connection (the one the xDS client uses). It is a DemandSink.
type Reporter struct {
	conn grpc.ClientConnInterface
	// OnError, if set, sees errors of fire-and-forget Demand calls.
	OnError func(error)
}

// NewReporter returns a Reporter on conn.
func NewReporter(conn grpc.ClientConnInterface) *Reporter {
	return &Reporter{conn: conn}
}

// Report sends one batch of pod stats.
func (r *Reporter) Report(ctx context.Context, stats []contract.PodStat) error {
	if err := r.conn.Invoke(ctx, contract.ReportMethod, &contract.StatsReport{Stats: stats}, &contract.Ack{}, grpc.CallContentSubtype(contract.SignalCodecName)); err != nil {
		return fmt.Errorf("reporting %d pod stats to the autoscaler: %w", len(stats), err)
	}
	return nil
}

// SendDemand tells the autoscaler that a request for namespace/name waits
// for an endpoint, without a count (it counts as one), and waits for the reply.
func (r *Reporter) SendDemand(ctx context.Context, namespace, name string) error {
	return r.send(ctx, &contract.DemandSignal{Namespace: namespace, Name: name})
}

// SendHeld tells the autoscaler that this sidecar holds held requests for
// namespace/name (0: none any more), and waits for the reply.
func (r *Reporter) SendHeld(ctx context.Context, namespace, name string, held int) error {
	return r.send(ctx, &contract.DemandSignal{Namespace: namespace, Name: name, Held: contract.HeldCount(held)})
}

func (r *Reporter) send(ctx context.Context, in *contract.DemandSignal) error {
	if err := r.conn.Invoke(ctx, contract.DemandMethod, in, &contract.Ack{}, grpc.CallContentSubtype(contract.SignalCodecName)); err != nil {
		return fmt.Errorf("sending demand for function %s/%s to the autoscaler: %w", in.Namespace, in.Name, err)
	}
	return nil
}

// Demand implements DemandSink: it sends the held count and waits for the
// reply, at most DefaultDemandTimeout. The Activator calls it from the one
// goroutine that reports for the function (not from the held request), so a
// slow manager delays only that function's later counts, and they stay in order.
func (r *Reporter) Demand(namespace, name string, held int) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultDemandTimeout)
	defer cancel()
	if err := r.SendHeld(ctx, namespace, name, held); err != nil && r.OnError != nil {
		r.OnError(err)
	}
}
