package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
)

// Headers of a dead-lettered call that Redrive rewrites. They are written by sidecar/async
// (which cannot be imported from here without linking the sidecar into the manager); its
// tests run Redrive on a real dead letter, which pins the names.
const (
	hdrCallID     = "X-Call-Id"
	hdrDeadReason = "X-Weft-Dead-Reason"
	hdrAttempts   = "X-Weft-Attempts"
	hdrEnqueued   = "Weft-Enqueued-At"
)

// RedriveJS is the part of jetstream.JetStream that Redrive needs.
type RedriveJS interface {
	StreamGetter
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// Redrive queues a function's dead-lettered calls again, oldest first, at most limit of
// them (0: all), and removes each from WEFT_DEAD once it is back in WEFT_CALLS. A redriven
// call keeps its call id (callbacks and logs still match) and starts afresh: attempts
// from 1, its age from now. It returns how many calls were queued again.
func Redrive(ctx context.Context, js RedriveJS, namespace, name string, now time.Time, limit int) (int, error) {
	dead, err := js.Stream(ctx, contract.DeadStream)
	if err != nil {
		return 0, fmt.Errorf("looking up stream %s: %w", contract.DeadStream, err)
	}
	subject := contract.DeadSubject(namespace, name)
	n := 0
	for seq := uint64(1); limit == 0 || n < limit; {
		m, err := dead.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("reading dead-lettered calls of %s/%s: %w", namespace, name, err)
		}
		h := nats.Header{}
		for k, vs := range m.Header {
			h[k] = append([]string(nil), vs...)
		}
		delete(h, hdrDeadReason)
		delete(h, hdrAttempts)
		h.Set(hdrEnqueued, now.UTC().Format(time.RFC3339Nano))
		// A fresh de-duplication id: the original is likely still in the window and would
		// make JetStream drop the redriven call.
		h.Set(nats.MsgIdHdr, h.Get(hdrCallID)+"/redrive/"+strconv.FormatUint(m.Sequence, 10))
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: contract.CallsSubject(namespace, name), Header: h, Data: m.Data}); err != nil {
			return n, fmt.Errorf("queueing dead-lettered call %s of %s/%s again: %w", h.Get(hdrCallID), namespace, name, err)
		}
		if err := dead.DeleteMsg(ctx, m.Sequence); err != nil {
			return n + 1, fmt.Errorf("removing redriven call %s from %s (it is queued again; delete it by hand to avoid a second redrive): %w",
				h.Get(hdrCallID), contract.DeadStream, err)
		}
		n++
		seq = m.Sequence + 1
	}
	return n, nil
}
