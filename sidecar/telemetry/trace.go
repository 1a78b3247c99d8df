package telemetry

// TraceOptions configure trace context handling.
type TraceOptions struct {
	// SamplePerMillion is the share of new traces the sidecar samples; 0 turns span
	// making off (trace headers then pass through untouched).
	SamplePerMillion uint32
}
