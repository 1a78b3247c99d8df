package async

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// refusalTTL is how long a refused subject is answered 403 at once without asking NATS
// again; a policy change that admits this identity reconnects it, which forgets refusals
// sooner.
const refusalTTL = 30 * time.Second

// maxRefusals bounds the subjects remembered (one per function this identity may not
// call); past it the oldest half is forgotten, which only costs one more round trip each.
const maxRefusals = 1024

// Refusals remembers the subjects NATS recently refused this sidecar's identity to publish
// to (a function whose weft.dev/async-callers leaves it out), so the Publisher answers 403
// saying why instead of 503 after its publish timeout. The zero value is ready.
type Refusals struct {
	mu sync.Mutex
	at map[string]time.Time
}

// note records the subject of a publish permissions violation; other errors are ignored.
func (r *Refusals) note(err error, now time.Time) {
	if r == nil || !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	_, rest, ok := strings.Cut(err.Error(), `for Publish to "`)
	if !ok {
		return
	}
	subject, _, ok := strings.Cut(rest, `"`)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at == nil {
		r.at = map[string]time.Time{}
	}
	if len(r.at) >= maxRefusals {
		for s, t := range r.at {
			if now.Sub(t) > refusalTTL || len(r.at) >= maxRefusals/2 {
				delete(r.at, s)
			}
		}
	}
	r.at[subject] = now
}

// Refused reports whether NATS refused subject within refusalTTL before now.
func (r *Refusals) Refused(subject string, now time.Time) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.at[subject]
	return ok && now.Sub(t) < refusalTTL
}

// reset forgets every refusal: a new connection may carry a new grant.
func (r *Refusals) reset() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.at = nil
	r.mu.Unlock()
}
