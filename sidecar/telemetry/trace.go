package telemetry

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"unsafe"
)

// TraceOptions configure trace context handling.
type TraceOptions struct {
	// SamplePerMillion is the share of new traces (requests that arrive without a sampled
	// context) the sidecar samples. 0 turns span making off: trace headers then pass
	// through untouched.
	SamplePerMillion uint32
	// Exporter receives the spans of sampled exchanges; nil: the sidecar still makes span
	// ids (so the next hop's spans have the right parent) but exports nothing.
	Exporter *OTLPExporter
}

// Span is one hop's span as the record carries it: ids only, no allocation.
type Span struct {
	TraceID [16]byte
	ID      [8]byte
	Parent  [8]byte // zero: the root
	Sampled bool    // the sidecar made this span (it exports it)
}

// Header names, canonical.
const (
	hdrRequestID   = "X-Request-Id"
	hdrTraceparent = "Traceparent"
	hdrB3          = "B3"
	hdrB3TraceID   = "X-B3-Traceid"
	hdrB3SpanID    = "X-B3-Spanid"
	hdrB3Parent    = "X-B3-Parentspanid"
	hdrB3Sampled   = "X-B3-Sampled"
)

// HeaderBuf holds the header values Propagate writes, so a path that reuses it per
// request (the event loop's exchange) allocates nothing. Values written through it are
// valid until its next use: only for a request whose headers nothing keeps past the
// exchange.
type HeaderBuf struct {
	rid   [36]byte
	ridV  [1]string
	tp    [55]byte
	tpV   [1]string
	span  [16]byte
	spanV [1]string
	par   [16]byte
	parV  [1]string
}

// value returns b, memory of a HeaderBuf, as a one-element header value held in store
// (the same HeaderBuf's): no allocation.
func value(b []byte, store *[1]string) []string {
	store[0] = unsafe.String(&b[0], len(b))
	return store[:]
}

// writeTraceparent writes sp as a version 00 traceparent, sampled.
func writeTraceparent(dst *[55]byte, sp *Span) {
	copy(dst[:], "00-")
	hex.Encode(dst[3:35], sp.TraceID[:])
	dst[35] = '-'
	hex.Encode(dst[36:52], sp.ID[:])
	copy(dst[52:], "-01")
}

// Propagate readies a request's headers for the next hop: an x-request-id when it has
// none (a UUIDv4, as Envoy generates), and, when tracing is on, a new span in the
// request's trace (W3C traceparent, or B3 when only B3 came) or a new trace sampled at
// SamplePerMillion, written back as traceparent and, if the request carried B3, as B3.
// tracestate passes as it came. It fills rec.RequestID and rec.Span. buf may be nil.
func (m *Mesh) Propagate(h http.Header, rec *HTTPRecord, buf *HeaderBuf) {
	if m == nil {
		return
	}
	if vv := h[hdrRequestID]; len(vv) > 0 && vv[0] != "" {
		rec.RequestID = vv[0]
	} else {
		if buf != nil {
			appendUUID(&buf.rid)
			h[hdrRequestID] = value(buf.rid[:], &buf.ridV)
		} else {
			var b [36]byte
			appendUUID(&b)
			h[hdrRequestID] = []string{string(b[:])}
		}
		rec.RequestID = h[hdrRequestID][0]
	}
	if m.trace.SamplePerMillion == 0 {
		return
	}
	sp, b3, ok := incoming(h)
	if ok && !sp.Sampled {
		return // the caller decided not to sample: pass through
	}
	if !ok {
		if rand.Uint32N(1_000_000) >= m.trace.SamplePerMillion {
			return
		}
		fillRandom(sp.TraceID[:])
		sp.Sampled = true
	}
	sp.Parent, sp.ID = sp.ID, [8]byte{}
	fillRandom(sp.ID[:])
	rec.Span = sp
	if buf != nil {
		writeTraceparent(&buf.tp, &sp)
		h[hdrTraceparent] = value(buf.tp[:], &buf.tpV)
	} else {
		var tp [55]byte
		writeTraceparent(&tp, &sp)
		h[hdrTraceparent] = []string{string(tp[:])}
	}
	if b3 {
		delete(h, hdrB3) // rewritten in the multi-header form
		if _, ok := h[hdrB3TraceID]; !ok {
			h[hdrB3TraceID] = []string{hex.EncodeToString(sp.TraceID[:])}
		}
		if buf != nil {
			hex.Encode(buf.span[:], sp.ID[:])
			hex.Encode(buf.par[:], sp.Parent[:])
			h[hdrB3SpanID] = value(buf.span[:], &buf.spanV)
			h[hdrB3Parent] = value(buf.par[:], &buf.parV)
		} else {
			h[hdrB3SpanID] = []string{hex.EncodeToString(sp.ID[:])}
			h[hdrB3Parent] = []string{hex.EncodeToString(sp.Parent[:])}
		}
		h[hdrB3Sampled] = sampledOne
	}
}

var sampledOne = []string{"1"}

// incoming reads the request's trace context: traceparent first, then B3 (multi-header
// or single). b3 reports whether B3 headers came (they are rewritten too).
func incoming(h http.Header) (sp Span, b3 bool, ok bool) {
	_, b3 = h[hdrB3TraceID]
	if _, single := h[hdrB3]; single {
		b3 = true
	}
	if vv := h[hdrTraceparent]; len(vv) == 1 {
		if sp, ok = parseTraceparent(vv[0]); ok {
			return sp, b3, true
		}
	}
	if vv := h[hdrB3]; len(vv) > 0 {
		sp, ok = parseB3Single(vv[0])
		return sp, b3, ok
	}
	if vv := h[hdrB3TraceID]; len(vv) > 0 {
		if !decodeID(sp.TraceID[:], vv[0]) || !decodeID(sp.ID[:], headerFirst(h, hdrB3SpanID)) {
			return Span{}, b3, false
		}
		s := headerFirst(h, hdrB3Sampled)
		sp.Sampled = s == "1" || s == "true" || headerFirst(h, "X-B3-Flags") == "1"
		if s == "" && headerFirst(h, "X-B3-Flags") == "" {
			sp.Sampled = true // no decision sent: the caller defers to us; we sample what came traced
		}
		return sp, b3, true
	}
	return Span{}, b3, false
}

func headerFirst(h http.Header, k string) string {
	if vv := h[k]; len(vv) > 0 {
		return vv[0]
	}
	return ""
}

// parseTraceparent reads a W3C traceparent (version 00 layout; a later version's first
// 55 characters, as the spec asks).
func parseTraceparent(v string) (sp Span, ok bool) {
	if len(v) < 55 || (len(v) > 55 && (v[:2] == "00" || v[55] != '-')) || v[2] != '-' || v[35] != '-' || v[52] != '-' || v[:2] == "ff" {
		return sp, false
	}
	var ver, flags [1]byte
	if _, err := hex.Decode(ver[:], []byte(v[:2])); err != nil {
		return sp, false
	}
	if !decodeHex(sp.TraceID[:], v[3:35]) || !decodeHex(sp.ID[:], v[36:52]) || !decodeHex(flags[:], v[53:55]) {
		return sp, false
	}
	if sp.TraceID == [16]byte{} || sp.ID == [8]byte{} {
		return sp, false
	}
	sp.Sampled = flags[0]&1 == 1
	return sp, true
}

// parseB3Single reads b3: {traceid}-{spanid}[-{sampled}[-{parent}]], or a lone "0"/"1"/"d".
func parseB3Single(v string) (sp Span, ok bool) {
	var parts [4]string
	n := 0
	for n < 4 {
		i := indexDash(v)
		if i < 0 {
			parts[n] = v
			n++
			break
		}
		parts[n], v = v[:i], v[i+1:]
		n++
	}
	if n < 2 || !decodeID(sp.TraceID[:], parts[0]) || !decodeID(sp.ID[:], parts[1]) {
		return Span{}, false
	}
	sp.Sampled = n < 3 || parts[2] == "1" || parts[2] == "d"
	return sp, true
}

func indexDash(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			return i
		}
	}
	return -1
}

// decodeID reads a B3 id of 16 or 32 hex digits (a 64-bit trace id is left-padded).
func decodeID(dst []byte, s string) bool {
	if len(s) == 2*len(dst) {
		return decodeHex(dst, s) && !allZero(dst)
	}
	if len(dst) == 16 && len(s) == 16 {
		clear(dst[:8])
		return decodeHex(dst[8:], s) && !allZero(dst)
	}
	return false
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// decodeHex decodes lower- or upper-case hex without allocating.
func decodeHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func fillRandom(b []byte) {
	for i := 0; i < len(b); i += 8 {
		x := rand.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(x >> (8 * j))
		}
	}
}

// appendUUID writes a random UUIDv4 in its 36-character form.
func appendUUID(dst *[36]byte) {
	var b [16]byte
	fillRandom(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var h [32]byte
	hex.Encode(h[:], b[:])
	copy(dst[0:8], h[0:8])
	dst[8] = '-'
	copy(dst[9:13], h[8:12])
	dst[13] = '-'
	copy(dst[14:18], h[12:16])
	dst[18] = '-'
	copy(dst[19:23], h[16:20])
	dst[23] = '-'
	copy(dst[24:36], h[20:32])
}
