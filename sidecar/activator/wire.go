package activator

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

// The signal service carries sidecar → manager signals on the ADS port. It
// is plain gRPC with JSON bodies (codec CodecName) so neither side needs
// generated code; the manager registers it with autoscale.RegisterSignalServer.
const (
	SignalService = "weft.autoscale.v1.Signals"
	ReportMethod  = "/" + SignalService + "/Report"
	DemandMethod  = "/" + SignalService + "/Demand"
	// CodecName is the gRPC content-subtype: requests travel as
	// application/grpc+weftjson.
	CodecName = "weftjson"
)

// PodStat is one pod's per-second report, sent by the function's own sidecar.
type PodStat struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Pod       string `json:"pod"`
	// Concurrency is the time-weighted average of in-flight requests over the second.
	Concurrency float64 `json:"concurrency"`
	// Requests is how many requests arrived during the second.
	Requests float64 `json:"requests"`
	// InFlight is how many requests were still running when the second ended.
	InFlight int `json:"inFlight"`
}

// StatsReport is the body of Report: the stats of one or more pods.
type StatsReport struct {
	Stats []PodStat `json:"stats"`
}

// DemandSignal is the body of Demand: a caller sidecar holds a request for
// the function because it has no ready endpoint.
type DemandSignal struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Ack is the empty reply to both methods.
type Ack struct{}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return CodecName }

func init() { encoding.RegisterCodec(jsonCodec{}) }

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
func (r *Reporter) Report(ctx context.Context, stats []PodStat) error {
	if err := r.conn.Invoke(ctx, ReportMethod, &StatsReport{Stats: stats}, &Ack{}, grpc.CallContentSubtype(CodecName)); err != nil {
		return fmt.Errorf("reporting %d pod stats to the autoscaler: %w", len(stats), err)
	}
	return nil
}

// SendDemand tells the autoscaler that a request for namespace/name waits
// for an endpoint, and waits for the reply.
func (r *Reporter) SendDemand(ctx context.Context, namespace, name string) error {
	in := &DemandSignal{Namespace: namespace, Name: name}
	if err := r.conn.Invoke(ctx, DemandMethod, in, &Ack{}, grpc.CallContentSubtype(CodecName)); err != nil {
		return fmt.Errorf("sending demand for function %s/%s to the autoscaler: %w", namespace, name, err)
	}
	return nil
}

// Demand implements DemandSink without blocking the held request: it sends
// in the background, bounded by DefaultDemandTimeout. The Activator calls it
// at most once per second per function, so goroutines stay few.
func (r *Reporter) Demand(namespace, name string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), DefaultDemandTimeout)
		defer cancel()
		if err := r.SendDemand(ctx, namespace, name); err != nil && r.OnError != nil {
			r.OnError(err)
		}
	}()
}
