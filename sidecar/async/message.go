package async

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weftmesh/weft/contract"
)

// Subjects and streams are the contract's; internal/queue creates the streams.
func callsSubject(fn FunctionRef) string { return contract.CallsSubject(fn.Namespace, fn.Name) }
func deadSubject(fn FunctionRef) string  { return contract.DeadSubject(fn.Namespace, fn.Name) }

// Header names. The HTTP-facing ones are OpenFaaS's, which users and tools already know.
const (
	HeaderCallID         = "X-Call-Id"
	HeaderCallbackURL    = "X-Callback-Url"
	HeaderFunctionStatus = "X-Function-Status"
	HeaderDuration       = "X-Duration-Seconds"
	HeaderDeadReason     = "X-Weft-Dead-Reason"
	HeaderAttempts       = "X-Weft-Attempts"
	HeaderIdempotencyKey = "Idempotency-Key"

	// Message-only headers carry the request line and enqueue time. The "Weft-" and
	// "Nats-" prefixes are reserved: a caller's headers with them are dropped, so a caller
	// cannot forge them or steer JetStream (Nats-Expected-*, Nats-TTL).
	hdrMethod   = "Weft-Method"
	hdrURI      = "Weft-Uri"
	hdrHost     = "Weft-Host"
	hdrEnqueued = "Weft-Enqueued-At"
)

// hopHeaders are per-connection headers that must not travel with a queued call.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade", "Content-Length", "Proxy-Authorization", "Proxy-Authenticate"}

// FunctionRef names a function.
type FunctionRef struct{ Namespace, Name string }

func (f FunctionRef) String() string { return f.Namespace + "/" + f.Name }

// callID is a fresh random UUID (v4), or, for a request with an Idempotency-Key, a UUID
// derived from the function and the key. Deriving it means a duplicate publish, which
// JetStream drops by Nats-Msg-Id, answers with the same call id as the original without
// having to find the original message (it may already be consumed). Scoping by function
// keeps two functions' keys from colliding in the shared stream.
func callID(fn FunctionRef, idempotencyKey string) string {
	var b [16]byte
	if idempotencyKey == "" {
		_, _ = rand.Read(b[:])
	} else {
		sum := sha256.Sum256([]byte(fn.Namespace + "\x00" + fn.Name + "\x00" + idempotencyKey))
		copy(b[:], sum[:16])
	}
	b[6] = b[6]&0x0f | 0x40 // version 4 layout (the derived form is UUID-shaped, not random)
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// encodeCall turns a request (body already read) into the message published for it.
func encodeCall(fn FunctionRef, r *http.Request, body []byte, id string, now time.Time) *nats.Msg {
	h := nats.Header{}
	for k, vs := range r.Header {
		if reservedHeader(k) {
			continue
		}
		h[k] = append([]string(nil), vs...)
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	if p := dropRespondAsync(r.Header.Values("Prefer")); len(p) > 0 {
		h["Prefer"] = p
	} else {
		delete(h, "Prefer")
	}
	h.Set(HeaderCallID, id)
	h.Set(nats.MsgIdHdr, id)
	if cb := r.Header.Get(HeaderCallbackURL); cb != "" {
		h.Set(HeaderCallbackURL, cb)
	}
	h.Set(hdrMethod, r.Method)
	h.Set(hdrURI, r.URL.RequestURI())
	h.Set(hdrHost, r.Host)
	h.Set(hdrEnqueued, now.UTC().Format(time.RFC3339Nano))
	return &nats.Msg{Subject: callsSubject(fn), Header: h, Data: body}
}

func reservedHeader(k string) bool {
	return strings.HasPrefix(k, "Weft-") || strings.HasPrefix(k, "Nats-") ||
		k == HeaderCallID || k == HeaderCallbackURL || k == HeaderDeadReason || k == HeaderAttempts
}

// dropRespondAsync removes the respond-async preference (it was for this sidecar, not the
// app) and keeps any other preferences.
func dropRespondAsync(values []string) []string {
	var out []string
	for _, v := range values {
		var keep []string
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" && !strings.EqualFold(p, "respond-async") {
				keep = append(keep, p)
			}
		}
		if len(keep) > 0 {
			out = append(out, strings.Join(keep, ", "))
		}
	}
	return out
}

// WantsAsync reports whether the request asks to be answered at once with
// "Prefer: respond-async" (RFC 7240); the outbound proxy then hands it to a Publisher.
func WantsAsync(h http.Header) bool {
	for _, v := range h.Values("Prefer") {
		for p := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), "respond-async") {
				return true
			}
		}
	}
	return false
}

// call is a decoded message, ready to run against the app.
type call struct {
	id          string
	method, uri string
	host        string
	header      http.Header // the caller's headers, without message-only ones
	body        []byte
	callbackURL string
	enqueued    time.Time // zero if the header is missing or malformed
}

func decodeCall(m *nats.Msg) (*call, error) {
	c := &call{
		id:          m.Header.Get(HeaderCallID),
		method:      m.Header.Get(hdrMethod),
		uri:         m.Header.Get(hdrURI),
		host:        m.Header.Get(hdrHost),
		callbackURL: m.Header.Get(HeaderCallbackURL),
		body:        m.Data,
		header:      http.Header{},
	}
	if c.method == "" || !strings.HasPrefix(c.uri, "/") {
		return nil, fmt.Errorf("message %s has no request line (method %q, uri %q); it was not published by a Weft sidecar", c.id, c.method, c.uri)
	}
	if t, err := time.Parse(time.RFC3339Nano, m.Header.Get(hdrEnqueued)); err == nil {
		c.enqueued = t
	}
	for k, vs := range m.Header {
		if !reservedHeader(k) {
			c.header[k] = vs
		}
	}
	return c, nil
}
