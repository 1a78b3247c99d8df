package httpproxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// Telemetry hooks (sidecar/telemetry): both HTTP paths fill a telemetry.HTTPRecord for
// each exchange and hand it over as the exchange ends. The record lives in memory the
// path already reuses — the event loop's exchange, the goroutine path's per-connection
// h1Writer, the per-request h2Writer — so recording allocates nothing per request.

// responseFlag is Envoy's response flag for the error an exchange was answered with
// locally: UH no healthy upstream, UT timeout, UO overflow (pool or breaker), UF connect
// failure, UC upstream reset, "" otherwise.
func responseFlag(err error) string {
	var full *upstream.PoolFullError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, errNoHost):
		return "UH"
	case errors.As(err, &full) || upstream.IsPoolError(err):
		return "UO"
	case isConnectFailure(err):
		return "UF"
	case isTimeout(err):
		return "UT"
	case isReset(err):
		return "UC"
	}
	return ""
}

// meshInbound reports whether the listener serves the pod's inbound traffic: the inbound
// listener, or one of its capture chains' (config.ChainListenerName). Its exchanges are
// reported by the destination, and the peer header stops there.
func (l *Listener) meshInbound() bool {
	return l.inbound || strings.HasPrefix(l.Name, contract.InboundListenerName+"|")
}

// meshCluster reports whether a cluster is one of the mesh's (a service's or a
// function's), whose sidecar reads the peer metadata; the passthrough and external
// clusters never get it.
func meshCluster(name string) bool {
	return strings.HasPrefix(name, "outbound|") || strings.HasPrefix(name, "function|")
}

// takePeer removes the peer metadata header from an inbound request (the app never sees
// it) and returns its first value.
func takePeer(h http.Header) string {
	vv, ok := h[telemetry.PeerHeader]
	if !ok {
		return ""
	}
	delete(h, telemetry.PeerHeader)
	if len(vv) == 0 {
		return ""
	}
	return vv[0]
}

// beginRecord readies rec for r: which side reports it, the peer (inbound), the request
// size, and what the access log wants when it is on.
func (l *Listener) beginRecord(rec *telemetry.HTTPRecord, r *http.Request, start time.Time, buf *telemetry.HeaderBuf) {
	tel := l.proxy.opts.Telemetry
	inbound := l.meshInbound()
	*rec = telemetry.HTTPRecord{Inbound: inbound, Authority: r.Host, GRPC: isGRPC(r), GRPCStatus: -1, Start: start}
	if inbound {
		rec.Peer = takePeer(r.Header)
	}
	rec.ReqBytes = max(r.ContentLength, 0)
	// buf is nil on the goroutine path, whose header values may outlive the exchange
	// (mirrors): there Propagate allocates them.
	tel.Propagate(r.Header, rec, buf)
	if tel.Logging() || rec.Span.Sampled {
		rec.Method, rec.Path, rec.Protocol = r.Method, r.RequestURI, r.Proto
		if rec.Path == "" {
			rec.Path = r.URL.RequestURI()
		}
		rec.UserAgent, rec.DownstreamRemote = headerValue(r.Header, "User-Agent"), r.RemoteAddr
	}
}

// headerValue is h's first value for the canonical key k, without Get's canonicalizing.
func headerValue(h http.Header, k string) string {
	if vv := h[k]; len(vv) > 0 {
		return vv[0]
	}
	return ""
}

// markOutbound sets what a forwarded request carries for the next sidecar: the peer
// metadata (mesh clusters only), and records the cluster.
func (l *Listener) markOutbound(rec *telemetry.HTTPRecord, h http.Header, cluster string) {
	tel := l.proxy.opts.Telemetry
	if tel == nil {
		return
	}
	if !l.meshInbound() && meshCluster(cluster) {
		h[telemetry.PeerHeader] = tel.PeerValue()
	}
}

// answerPeer reports whether an inbound exchange's response carries this pod's peer
// metadata back: on the inbound side, to a caller whose sidecar sent its own (Istio's
// metadata exchange, so the caller's reporter="source" metrics name this workload).
func (l *Listener) answerPeer(rec *telemetry.HTTPRecord) bool {
	return l.proxy.opts.Telemetry != nil && rec.Peer != "" && l.meshInbound()
}

// responsePeer takes the called sidecar's peer metadata off an outbound response (the
// app never sees it) into rec.
func (l *Listener) responsePeer(rec *telemetry.HTTPRecord, h http.Header) {
	if l.proxy.opts.Telemetry != nil && !l.meshInbound() {
		rec.DestinationPeer = takePeer(h)
	}
}

// appendPeerField adds the peer metadata line to a response head that ends with its
// blank line.
func appendPeerField(head []byte, v string) []byte {
	head = append(head[:len(head)-2], telemetry.PeerHeader+": "...)
	head = append(head, v...)
	return append(head, "\r\n\r\n"...)
}

// findPeerField finds the peer metadata line (any case) in a response head: the line is
// head[start:end] and value its value; start is -1 if there is none.
func findPeerField(head []byte) (start, end int, value []byte) {
	const name = telemetry.PeerHeader + ":"
	for i := 0; i+1+len(name) <= len(head); i++ {
		if head[i] != '\n' || !asciiEqualFold(head[i+1:i+1+len(name)], name) {
			continue
		}
		start = i + 1
		n := bytes.Index(head[start:], crlf)
		if n < 0 {
			break
		}
		end = start + n + 2
		return start, end, bytes.TrimSpace(head[start+len(name) : end-2])
	}
	return -1, -1, nil
}

// recorder is a response writer that carries the exchange's record (h1Writer, h2Writer).
type recorder interface {
	record() *telemetry.HTTPRecord
}

// recordOf is w's record, or nil when telemetry is off or w carries none.
func (l *Listener) recordOf(w http.ResponseWriter) *telemetry.HTTPRecord {
	if l.proxy.opts.Telemetry == nil {
		return nil
	}
	if rw, ok := w.(recorder); ok {
		return rw.record()
	}
	return nil
}

func (w *h1Writer) record() *telemetry.HTTPRecord { return &w.rec }
func (w *h2Writer) record() *telemetry.HTTPRecord { return &w.rec }

// Write and WriteHeader count what the HTTP/2 writer sends, for the record.
func (w *h2Writer) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *h2Writer) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.rec.RespBytes += int64(n)
	return n, err
}

// countedBody counts a request body of unknown length as it is read.
type countedBody struct {
	io.ReadCloser
	n *int64
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	*b.n += int64(n)
	return n, err
}

// serveRecorded is ServeHTTP's telemetry: it readies the writer's record, serves, then
// hands the record over with the status and duration.
func (l *Listener) serveRecorded(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var rec *telemetry.HTTPRecord
	switch tw := w.(type) {
	case *h1Writer:
		rec = &tw.rec
	case *h2Writer:
		rec = &tw.rec
	default:
		l.serve1(w, r) // a writer of tests: no record
		return
	}
	l.beginRecord(rec, r, start, nil)
	if r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body = &countedBody{ReadCloser: r.Body, n: &rec.ReqBytes}
	}
	l.serve1(w, r)
	switch tw := w.(type) {
	case *h1Writer:
		rec.Status = tw.status
	case *h2Writer:
		rec.Status = tw.status
	}
	rec.Duration = time.Since(start)
	l.proxy.opts.Telemetry.Record(rec)
}

// recordLoop hands the event loop's record of ex over as ex ends.
func (l *Listener) recordLoop(ex *exchange, elapsed time.Duration) {
	tel := l.proxy.opts.Telemetry
	if tel == nil {
		return
	}
	ex.rec.Status, ex.rec.Duration = ex.status, elapsed
	tel.Record(&ex.rec)
}
