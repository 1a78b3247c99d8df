package telemetry

import (
	"bufio"
	"io"
	"slices"
	"strconv"
	"strings"
)

// WritePrometheus writes the Istio metrics in the Prometheus text format, series sorted
// by their labels.
func (m *Mesh) WritePrometheus(out io.Writer) {
	if m == nil {
		return
	}
	hs := make([]*httpSeries, 0, m.http.len())
	m.http.each(func(_ httpKey, s *httpSeries) { hs = append(hs, s) })
	ts := make([]*TCPSeries, 0, m.tcp.len())
	m.tcp.each(func(_ tcpKey, s *TCPSeries) { ts = append(ts, s) })
	slices.SortFunc(hs, func(a, b *httpSeries) int { return strings.Compare(a.labels, b.labels) })
	slices.SortFunc(ts, func(a, b *TCPSeries) int { return strings.Compare(a.labels, b.labels) })
	w := bufio.NewWriter(out)
	defer w.Flush()

	header(w, "istio_requests_total", "counter", "Requests the sidecar handled (Istio standard metric).")
	for _, s := range hs {
		sample(w, "istio_requests_total", s.labels, "", strconv.FormatUint(s.requests.Load(), 10))
	}
	histogram(w, hs, "istio_request_duration_milliseconds", "Request duration in milliseconds (Istio standard metric).",
		func(s *httpSeries) *hist { return &s.duration }, func(sum uint64) string { return strconv.FormatFloat(float64(sum)/1000, 'g', -1, 64) })
	bytesSum := func(sum uint64) string { return strconv.FormatUint(sum, 10) }
	histogram(w, hs, "istio_request_bytes", "Request body sizes in bytes (Istio standard metric).",
		func(s *httpSeries) *hist { return &s.reqBytes }, bytesSum)
	histogram(w, hs, "istio_response_bytes", "Response body sizes in bytes (Istio standard metric).",
		func(s *httpSeries) *hist { return &s.resp }, bytesSum)

	tcp := func(name, help string, v func(*TCPSeries) uint64) {
		header(w, name, "counter", help)
		for _, s := range ts {
			sample(w, name, s.labels, "", strconv.FormatUint(v(s), 10))
		}
	}
	tcp("istio_tcp_sent_bytes_total", "Bytes sent to the caller on proxied TCP connections (Istio standard metric).", func(s *TCPSeries) uint64 { return s.sent.Load() })
	tcp("istio_tcp_received_bytes_total", "Bytes received from the caller on proxied TCP connections (Istio standard metric).", func(s *TCPSeries) uint64 { return s.received.Load() })
	tcp("istio_tcp_connections_opened_total", "Proxied TCP connections opened (Istio standard metric).", func(s *TCPSeries) uint64 { return s.opened.Load() })
	tcp("istio_tcp_connections_closed_total", "Proxied TCP connections closed (Istio standard metric).", func(s *TCPSeries) uint64 { return s.closed.Load() })

	header(w, "weft_telemetry_series_overflow_total", "counter",
		"Observations counted in the overflow series because a metric family already had its maximum of label sets.")
	w.WriteString("weft_telemetry_series_overflow_total " + strconv.FormatUint(m.overflow.Load(), 10) + "\n")
	if m.log != nil {
		m.log.writePrometheus(w)
	}
	if e := m.trace.Exporter; e != nil {
		exported, dropped, failed := e.Stats()
		header(w, "weft_trace_spans_exported_total", "counter", "Spans the OTLP exporter delivered.")
		w.WriteString("weft_trace_spans_exported_total " + strconv.FormatUint(exported, 10) + "\n")
		header(w, "weft_trace_spans_dropped_total", "counter", "Spans dropped because the exporter's queue was full.")
		w.WriteString("weft_trace_spans_dropped_total " + strconv.FormatUint(dropped, 10) + "\n")
		header(w, "weft_trace_spans_failed_total", "counter", "Spans in batches the collector refused or did not answer.")
		w.WriteString("weft_trace_spans_failed_total " + strconv.FormatUint(failed, 10) + "\n")
	}
}

func header(w *bufio.Writer, name, kind, help string) {
	w.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + kind + "\n")
}

func sample(w *bufio.Writer, name, labels, extra, value string) {
	w.WriteString(name)
	w.WriteByte('{')
	w.WriteString(labels)
	w.WriteString(extra)
	w.WriteString("} ")
	w.WriteString(value)
	w.WriteByte('\n')
}

var bucketLabels = func() []string {
	out := make([]string, 0, nBuckets+1)
	for _, b := range durationBuckets {
		out = append(out, `,le="`+strconv.FormatFloat(b, 'g', -1, 64)+`"`)
	}
	return append(out, `,le="+Inf"`)
}()

func histogram(w *bufio.Writer, hs []*httpSeries, name, help string, h func(*httpSeries) *hist, sum func(uint64) string) {
	header(w, name, "histogram", help)
	for _, s := range hs {
		hh := h(s)
		var cum uint64
		for i := range hh.counts {
			cum += hh.counts[i].Load()
			sample(w, name+"_bucket", s.labels, bucketLabels[i], strconv.FormatUint(cum, 10))
		}
		sample(w, name+"_sum", s.labels, "", sum(hh.sum.Load()))
		sample(w, name+"_count", s.labels, "", strconv.FormatUint(cum, 10))
	}
}
