package telemetry

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// OTLPExporter sends spans to an OpenTelemetry collector over OTLP/HTTP with the JSON
// encoding (POST <endpoint>, e.g. http://otel-collector:4318/v1/traces), in batches of
// at most BatchSize spans, at least every Interval. Spans wait in a queue of at most
// Buffer; past it they are dropped and counted, never making traffic wait.
type OTLPExporter struct {
	o                 OTLPOptions
	resource          []byte        // the resource's JSON, rendered once
	ch                chan spanData // never closed: export may race Close
	stop, done        chan struct{}
	closeOnce         sync.Once
	exported, dropped atomic.Uint64
	failed            atomic.Uint64 // spans in batches the collector refused or did not take
}

// OTLPOptions configure an OTLPExporter.
type OTLPOptions struct {
	Endpoint string
	// Service is the service.name resource attribute; Pod and Namespace become
	// k8s.pod.name and k8s.namespace.name.
	Service, Pod, Namespace string
	Buffer                  int           // spans queued (2048 when zero)
	BatchSize               int           // spans per request (512 when zero)
	Interval                time.Duration // longest a span waits for its batch (1 s when zero)
	Timeout                 time.Duration // per request (5 s when zero)
	Client                  *http.Client
}

type spanData struct {
	traceID    [16]byte
	id, parent [8]byte
	name       string
	kind       int // OTLP SpanKind: 1 internal, 2 server, 3 client
	start, end time.Time
	attrs      [][2]string
	intAttrs   [][2]any
	error      bool
}

// NewOTLPExporter starts the exporter's sender; Close flushes and stops it.
func NewOTLPExporter(o OTLPOptions) *OTLPExporter {
	if o.Buffer <= 0 {
		o.Buffer = 2048
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 512
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout}
	}
	e := &OTLPExporter{o: o, ch: make(chan spanData, o.Buffer), stop: make(chan struct{}), done: make(chan struct{})}
	var b []byte
	b = append(b, `{"attributes":[`...)
	b = appendKV(b, "service.name", o.Service)
	b = appendKV(b, "k8s.pod.name", o.Pod)
	b = appendKV(b, "k8s.namespace.name", o.Namespace)
	b = append(b, `]}`...)
	e.resource = b
	go e.run()
	return e
}

func (e *OTLPExporter) export(s spanData) {
	select {
	case e.ch <- s:
	default:
		e.dropped.Add(1)
	}
}

// Close sends what is queued and stops the sender; spans exported later are not sent.
func (e *OTLPExporter) Close() {
	e.closeOnce.Do(func() { close(e.stop) })
	<-e.done
}

// Stats returns the spans sent, dropped at the queue, and lost to failed requests.
func (e *OTLPExporter) Stats() (exported, dropped, failed uint64) {
	return e.exported.Load(), e.dropped.Load(), e.failed.Load()
}

func (e *OTLPExporter) run() {
	defer close(e.done)
	t := time.NewTicker(e.o.Interval)
	defer t.Stop()
	batch := make([]spanData, 0, e.o.BatchSize)
	for {
		select {
		case s := <-e.ch:
			if batch = append(batch, s); len(batch) == e.o.BatchSize {
				e.send(batch)
				batch = batch[:0]
			}
		case <-e.stop:
			for {
				select {
				case s := <-e.ch:
					if batch = append(batch, s); len(batch) == e.o.BatchSize {
						e.send(batch)
						batch = batch[:0]
					}
				default:
					e.send(batch)
					return
				}
			}
		case <-t.C:
			e.send(batch)
			batch = batch[:0]
		}
	}
}

func (e *OTLPExporter) send(batch []spanData) {
	if len(batch) == 0 {
		return
	}
	body := e.encode(batch)
	ctx, cancel := context.WithTimeout(context.Background(), e.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.o.Endpoint, bytes.NewReader(body))
	if err != nil {
		e.failed.Add(uint64(len(batch)))
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.o.Client.Do(req)
	if err != nil {
		e.failed.Add(uint64(len(batch)))
		return
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		e.failed.Add(uint64(len(batch)))
		return
	}
	e.exported.Add(uint64(len(batch)))
}

// encode renders an ExportTraceServiceRequest in OTLP's JSON encoding (ids as hex,
// times as decimal strings of Unix nanoseconds).
func (e *OTLPExporter) encode(batch []spanData) []byte {
	b := make([]byte, 0, 256*len(batch)+256)
	b = append(b, `{"resourceSpans":[{"resource":`...)
	b = append(b, e.resource...)
	b = append(b, `,"scopeSpans":[{"scope":{"name":"weft-sidecar"},"spans":[`...)
	for i, s := range batch {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"traceId":"`...)
		b = hex.AppendEncode(b, s.traceID[:])
		b = append(b, `","spanId":"`...)
		b = hex.AppendEncode(b, s.id[:])
		b = append(b, '"')
		if s.parent != [8]byte{} {
			b = append(b, `,"parentSpanId":"`...)
			b = hex.AppendEncode(b, s.parent[:])
			b = append(b, '"')
		}
		b = append(b, `,"name":`...)
		b = appendJSONString(b, s.name)
		b = append(b, `,"kind":`...)
		b = strconv.AppendInt(b, int64(s.kind), 10)
		b = append(b, `,"startTimeUnixNano":"`...)
		b = strconv.AppendInt(b, s.start.UnixNano(), 10)
		b = append(b, `","endTimeUnixNano":"`...)
		b = strconv.AppendInt(b, s.end.UnixNano(), 10)
		b = append(b, `","attributes":[`...)
		for _, kv := range s.attrs {
			b = appendKV(b, kv[0], kv[1])
		}
		for _, kv := range s.intAttrs {
			if b[len(b)-1] != '[' {
				b = append(b, ',')
			}
			b = append(b, `{"key":`...)
			b = appendJSONString(b, kv[0].(string))
			b = append(b, `,"value":{"intValue":"`...)
			b = strconv.AppendInt(b, kv[1].(int64), 10)
			b = append(b, `"}}`...)
		}
		b = append(b, `],"status":{"code":`...)
		if s.error {
			b = append(b, '2')
		} else {
			b = append(b, '0')
		}
		b = append(b, `}}`...)
	}
	return append(b, `]}]}]}`...)
}

// appendKV appends a string attribute to a JSON list b is inside of; empty values are left out.
func appendKV(b []byte, k, v string) []byte {
	if v == "" {
		return b
	}
	if b[len(b)-1] != '[' {
		b = append(b, ',')
	}
	b = append(b, `{"key":`...)
	b = appendJSONString(b, k)
	b = append(b, `,"value":{"stringValue":`...)
	b = appendJSONString(b, v)
	return append(b, `}}`...)
}

// exportSpans sends r's span, and its cold-start hold as a child span, when r's span was
// sampled and an exporter is set.
func (m *Mesh) exportSpans(r *HTTPRecord) {
	e := m.trace.Exporter
	if e == nil || !r.Span.Sampled {
		return
	}
	kind, side := 3, "outbound"
	if r.Inbound {
		kind, side = 2, "inbound"
	}
	end := r.Start.Add(r.Duration)
	s := spanData{traceID: r.Span.TraceID, id: r.Span.ID, parent: r.Span.Parent, kind: kind, start: r.Start, end: end,
		name: side + " " + r.Authority, error: r.Status == 0 || r.Status >= 500,
		attrs: [][2]string{{"http.request.method", r.Method}, {"url.path", r.Path}, {"server.address", r.Authority},
			{"weft.upstream_cluster", r.Cluster}, {"weft.upstream_host", r.UpstreamHost}, {"weft.response_flags", r.Flags},
			{"guid:x-request-id", r.RequestID}},
		intAttrs: [][2]any{{"http.response.status_code", int64(r.Status)}}}
	e.export(s)
	if !r.HoldStart.IsZero() {
		h := spanData{traceID: r.Span.TraceID, parent: r.Span.ID, kind: 1, start: r.HoldStart, end: r.HoldEnd,
			name: "weft.cold_start_hold", attrs: [][2]string{{"weft.upstream_cluster", r.Cluster}},
			intAttrs: [][2]any{{"weft.hold_ms", int64(r.HoldEnd.Sub(r.HoldStart) / time.Millisecond)}}}
		fillRandom(h.id[:])
		e.export(h)
	}
}
