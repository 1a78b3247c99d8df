package async

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
)

// MsgPublisher publishes to JetStream and waits for the stream's ack; jetstream.JetStream
// satisfies it.
type MsgPublisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// FunctionSource finds a function's async policy in the sidecar's current config: a
// function cluster function|<ns>/<name> and its decoded weft.dev/function metadata.
type FunctionSource interface {
	AsyncFunction(fn FunctionRef) (Config, bool)
}

// FunctionSourceFunc adapts a function to FunctionSource.
type FunctionSourceFunc func(fn FunctionRef) (Config, bool)

// AsyncFunction calls f.
func (f FunctionSourceFunc) AsyncFunction(fn FunctionRef) (Config, bool) { return f(fn) }

// PublisherOptions tune a Publisher; zero values take defaults.
type PublisherOptions struct {
	// PublishTimeout bounds waiting for the stream's ack. Default 5s.
	PublishTimeout time.Duration
	// RetryAfter is what a 503 tells the caller when NATS is unavailable. Default 5s.
	RetryAfter time.Duration
	// Refused, when set (the one given to Dial), turns a publish NATS refused for this
	// identity into 403 instead of 503.
	Refused *Refusals
	Clock   clock.PassiveClock // default clock.RealClock
	Logger  *slog.Logger       // default slog.Default()
}

// Publisher is the caller side: it queues a request and answers 202 with its call id.
type Publisher struct {
	js    MsgPublisher
	fns   FunctionSource
	opts  PublisherOptions
	stats publisherStats
}

// NewPublisher returns a Publisher that publishes with js and checks functions with fns.
func NewPublisher(js MsgPublisher, fns FunctionSource, opts PublisherOptions) *Publisher {
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 5 * time.Second
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = 5 * time.Second
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Publisher{js: js, fns: fns, opts: opts}
}

// ShouldQueue reports whether a request to a function with this policy is to be run
// asynchronously: the function is async, or the caller sent "Prefer: respond-async".
func ShouldQueue(cfg Config, r *http.Request) bool { return cfg.Enabled || WantsAsync(r.Header) }

// Accepted is the 202 body.
type Accepted struct {
	CallID   string `json:"callId"`
	Function string `json:"function"`
	// Duplicate is true when the Idempotency-Key was seen within the de-duplication window:
	// the call was queued earlier and is not queued again.
	Duplicate bool `json:"duplicate,omitempty"`
}

// PublishError is a refused publish: Status is the HTTP status to answer with and the
// message says what to do.
type PublishError struct {
	Status     int
	RetryAfter time.Duration
	Msg        string
	Err        error
}

func (e *PublishError) Error() string { return e.Msg }
func (e *PublishError) Unwrap() error { return e.Err }

// Publish queues r as a call to fn. It reads r's body (bounded by the function's
// maxBodyBytes) and returns the call's id; for an Idempotency-Key seen within the
// de-duplication window it returns the original call's id with dup true. Refusals are
// *PublishError.
func (p *Publisher) Publish(ctx context.Context, fn FunctionRef, r *http.Request) (id string, dup bool, err error) {
	cfg, ok := p.fns.AsyncFunction(fn)
	if !ok {
		return "", false, &PublishError{Status: http.StatusNotFound,
			Msg: fmt.Sprintf("function %s does not exist (this sidecar has no function cluster for it); check the MeshFunction's name and namespace", fn)}
	}
	if r.ContentLength > cfg.MaxBodyBytes {
		return "", false, tooLarge(fn, cfg)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, cfg.MaxBodyBytes+1))
	if err != nil {
		return "", false, &PublishError{Status: http.StatusBadRequest, Err: err,
			Msg: fmt.Sprintf("reading the request body for async call to %s: %v; send the request again", fn, err)}
	}
	if int64(len(body)) > cfg.MaxBodyBytes {
		return "", false, tooLarge(fn, cfg)
	}
	id = callID(fn, r.Header.Get(HeaderIdempotencyKey))
	msg := encodeCall(fn, r, body, id, p.opts.Clock.Now())
	if p.opts.Refused.Refused(msg.Subject, p.opts.Clock.Now()) {
		return "", false, notAllowed(fn)
	}
	pctx, cancel := context.WithTimeout(ctx, p.opts.PublishTimeout)
	defer cancel()
	ack, err := p.js.PublishMsg(pctx, msg)
	if err != nil && p.opts.Refused.Refused(msg.Subject, p.opts.Clock.Now()) {
		return "", false, notAllowed(fn)
	}
	if err != nil {
		why := err.Error()
		switch {
		case errors.Is(err, nats.ErrHeadersNotSupported), errors.Is(err, nats.ErrConnectionClosed),
			errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
			// Before the first connection nats.go reports missing header support.
			why = "this sidecar is not connected to NATS"
		case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
			why = "stream " + contract.CallsStream + " did not answer (NATS is down or the stream is missing)"
		case errors.Is(err, context.DeadlineExceeded):
			why = fmt.Sprintf("NATS did not confirm within %s", p.opts.PublishTimeout)
		}
		return "", false, &PublishError{Status: http.StatusServiceUnavailable, RetryAfter: p.opts.RetryAfter, Err: err,
			Msg: fmt.Sprintf("cannot queue async call to %s: %s; retry later (the call was not queued)", fn, why)}
	}
	return id, ack.Duplicate, nil
}

// notAllowed is a call NATS refused for this sidecar's identity.
func notAllowed(fn FunctionRef) error {
	return &PublishError{Status: http.StatusForbidden,
		Msg: fmt.Sprintf("this workload may not queue calls to function %s: the MeshFunction's weft.dev/async-callers annotation does not name this namespace or function; add it there (the call was not queued)", fn)}
}

func tooLarge(fn FunctionRef, cfg Config) error {
	return &PublishError{Status: http.StatusRequestEntityTooLarge,
		Msg: fmt.Sprintf("request body is larger than %d bytes, the async limit of function %s; send a smaller body or raise spec.async.maxBodyBytes", cfg.MaxBodyBytes, fn)}
}

// ServeAsync queues r as a call to fn and answers 202 with X-Call-Id and an Accepted JSON
// body, or the refusal's status with a plain-text body (404 unknown function, 413 body too
// large, 503 with Retry-After when NATS is unavailable).
func (p *Publisher) ServeAsync(w http.ResponseWriter, r *http.Request, fn FunctionRef) {
	id, dup, err := p.Publish(r.Context(), fn, r)
	if err != nil {
		var pe *PublishError
		if !errors.As(err, &pe) {
			pe = &PublishError{Status: http.StatusInternalServerError, Msg: err.Error()}
		}
		p.stats.record(fn, false, pe.Status)
		if pe.Status == http.StatusServiceUnavailable {
			p.opts.Logger.Warn("async publish failed", "function", fn.String(), "err", pe.Err)
		}
		if pe.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((pe.RetryAfter+time.Second-1)/time.Second)))
		}
		reply(w, pe.Status, "text/plain; charset=utf-8", []byte(pe.Msg+"\n"))
		return
	}
	p.stats.record(fn, dup, 0)
	b, _ := json.Marshal(Accepted{CallID: id, Function: fn.String(), Duplicate: dup})
	w.Header().Set(HeaderCallID, id)
	reply(w, http.StatusAccepted, "application/json", append(b, '\n'))
}

func reply(w http.ResponseWriter, status int, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
