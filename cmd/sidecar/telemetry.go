package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/sidecar/telemetry"
)

// Environment the injection webhook sets from pod annotations (internal/inject/telemetry.go).
const (
	envAccessLog          = "WEFT_ACCESS_LOG"
	envAccessLogSample    = "WEFT_ACCESS_LOG_SAMPLE"
	envAccessLogMinStatus = "WEFT_ACCESS_LOG_MIN_STATUS"
	envAccessLogListener  = "WEFT_ACCESS_LOG_LISTENER"
	envTraceSample        = "WEFT_TRACE_SAMPLE"
	envTraceOTLP          = "WEFT_TRACE_OTLP_ENDPOINT"
)

type telemetryFlags struct {
	istioMetrics       bool
	accessLog          bool
	accessLogSample    float64
	accessLogMinStatus int
	accessLogListener  string
	traceSample        float64
	traceOTLP          string
}

func envBool(k string) bool { b, _ := strconv.ParseBool(os.Getenv(k)); return b }

func envFloat(k string, def float64) float64 {
	if f, err := strconv.ParseFloat(os.Getenv(k), 64); err == nil {
		return f
	}
	return def
}

func envInt(k string) int { n, _ := strconv.Atoi(os.Getenv(k)); return n }

// addTelemetryFlags registers the telemetry flags; their defaults come from the env.
func addTelemetryFlags(f *telemetryFlags) {
	flag.BoolVar(&f.istioMetrics, "istio-metrics", true, "export Istio's standard metrics (istio_requests_total, ...) on /stats")
	flag.BoolVar(&f.accessLog, "access-log", envBool(envAccessLog), "write a JSON access-log line per HTTP exchange to stdout (default $"+envAccessLog+")")
	flag.Float64Var(&f.accessLogSample, "access-log-sample", envFloat(envAccessLogSample, 1), "share of exchanges the access log writes, 0..1 (default $"+envAccessLogSample+" or 1)")
	flag.IntVar(&f.accessLogMinStatus, "access-log-min-status", envInt(envAccessLogMinStatus), "log only exchanges answered with at least this status, e.g. 500 (default $"+envAccessLogMinStatus+"; 0: all)")
	flag.StringVar(&f.accessLogListener, "access-log-listener", os.Getenv(envAccessLogListener), `log only the "inbound" or the "outbound" listener's exchanges (default $`+envAccessLogListener+`; empty: both)`)
	flag.StringVar(&f.traceOTLP, "trace-otlp-endpoint", os.Getenv(envTraceOTLP), "OTLP/HTTP JSON traces endpoint spans are sent to, e.g. http://otel-collector.observability:4318/v1/traces (default $"+envTraceOTLP+"; empty: spans are made but not exported)")
	flag.Float64Var(&f.traceSample, "trace-sample", envFloat(envTraceSample, 0), "share of new traces the sidecar samples and makes spans for, 0..1 (default $"+envTraceSample+" or 0: off)")
}

func perMillion(name string, f float64) (uint32, error) {
	if f < 0 || f > 1 {
		return 0, fmt.Errorf("--%s %v is not a share between 0 and 1", name, f)
	}
	return uint32(f * 1e6), nil
}

// buildTelemetry returns the sidecar's telemetry (nil with --istio-metrics=false, no
// access log and no tracing) and what to close on exit: the access log and the span
// exporter, which flush what they queued.
func buildTelemetry(f flags, tf telemetryFlags) (*telemetry.Mesh, func(), error) {
	if !tf.istioMetrics && !tf.accessLog && tf.traceSample == 0 {
		return nil, func() {}, nil
	}
	labels := map[string]string{}
	for _, kv := range strings.Split(f.labels, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			labels[k] = v
		}
	}
	trace, err := perMillion("trace-sample", tf.traceSample)
	if err != nil {
		return nil, nil, err
	}
	sample, err := perMillion("access-log-sample", tf.accessLogSample)
	if err != nil {
		return nil, nil, err
	}
	switch tf.accessLogListener {
	case "", telemetry.ListenerInbound, telemetry.ListenerOutbound:
	default:
		return nil, nil, fmt.Errorf("--access-log-listener %q: use %q, %q or nothing for both", tf.accessLogListener, telemetry.ListenerInbound, telemetry.ListenerOutbound)
	}
	if tf.accessLog && sample == 0 {
		return nil, nil, fmt.Errorf("--access-log-sample 0 logs nothing; turn the access log off instead")
	}
	self := telemetry.WorkloadFromPod(f.pod, f.namespace, labels)
	o := telemetry.Options{Self: self, Function: f.function, Trace: telemetry.TraceOptions{SamplePerMillion: trace}}
	var closers []func()
	if tf.traceOTLP != "" {
		e := telemetry.NewOTLPExporter(telemetry.OTLPOptions{Endpoint: tf.traceOTLP, Service: self.CanonicalService, Pod: f.pod, Namespace: f.namespace})
		o.Trace.Exporter = e
		closers = append(closers, e.Close)
	}
	if tf.accessLog {
		al := telemetry.NewAccessLog(telemetry.AccessLogOptions{SamplePerMillion: sample, MinStatus: tf.accessLogMinStatus, Listener: tf.accessLogListener})
		o.AccessLog = al
		closers = append(closers, al.Close)
	}
	return telemetry.New(o), func() {
		for _, c := range closers {
			c()
		}
	}, nil
}
