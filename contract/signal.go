package contract

import "encoding/json"

// The signal service carries sidecar → manager signals on the ADS port. It is plain gRPC
// with JSON bodies (content-subtype SignalCodecName) so neither side needs generated code.
// Each side registers SignalCodec with google.golang.org/grpc/encoding itself, which keeps
// this package free of gRPC.
const (
	SignalService = "weft.autoscale.v1.Signals"
	ReportMethod  = "/" + SignalService + "/Report"
	DemandMethod  = "/" + SignalService + "/Demand"
	// SignalCodecName is the gRPC content-subtype: requests travel as
	// application/grpc+weftjson.
	SignalCodecName = "weftjson"
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

// DemandSignal is the body of Demand: a caller sidecar holds requests for the function
// because it has no ready endpoint or no concurrency room on the ready ones.
type DemandSignal struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Held is how many requests the sending sidecar holds for the function now: the
	// autoscaler counts them as in-flight requests (summed over the caller sidecars) until
	// the sidecar sends a new count or stops refreshing it. 0 withdraws the sidecar's
	// count (its held requests were released or gave up). Absent (nil), as from a sidecar
	// that predates it, the poke counts as one request in the second it arrives.
	Held *int `json:"held,omitempty"`
}

// HeldCount returns &n, for DemandSignal.Held.
func HeldCount(n int) *int { return &n }

// Ack is the empty reply to both methods.
type Ack struct{}

// SignalCodec is the JSON codec of the signal service; it implements grpc's
// encoding.Codec.
type SignalCodec struct{}

// Marshal encodes v as JSON.
func (SignalCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes JSON data into v.
func (SignalCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Name is SignalCodecName.
func (SignalCodec) Name() string { return SignalCodecName }
