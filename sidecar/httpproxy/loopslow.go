package httpproxy

import (
	"time"

	"github.com/weftmesh/weft/sidecar/upstream"
)

// The event loop's part of the slow-exchange diagnostics (upstream/inflight.go): at each
// host sweep (every hostSweep) a loop logs, once each, the exchanges that have waited on
// their upstream connection for upstream.SlowAfter, and publishes them for
// /debug/exchanges. Nothing is done per request.

// noteSlow runs on the loop at the host sweep.
func (h *hloop) noteSlow(now time.Time) {
	var slow, fresh []upstream.Exchange
	for _, u := range h.socks {
		if u == nil || !u.up || u.closed || u.ex == nil {
			continue
		}
		ex := u.ex
		age := now.Sub(ex.start)
		if age < upstream.SlowAfter {
			continue
		}
		e := upstream.Exchange{Path: "loop", Cluster: ex.c.Name, Host: u.host.Address, Age: age,
			Attempt: ex.retry.attempt, Reused: u.reused, TCP: upstream.ReadTCPState(u.fd)}
		slow = append(slow, e)
		if !ex.slowSeen {
			ex.slowSeen = true
			fresh = append(fresh, e)
		}
	}
	upstream.SortExchanges(fresh)
	upstream.LogExchanges(h.l.proxy.opts.Logger.With("listener", h.l.Name), fresh)
	if slow == nil && h.slow.Load() == nil {
		return
	}
	h.slow.Store(&slowSnapshot{at: now, list: slow})
}

// slowSnapshot is a loop's slow exchanges as of its last sweep.
type slowSnapshot struct {
	at   time.Time
	list []upstream.Exchange
}

// Exchanges lists the proxy's exchanges that are in flight for at least minAge:
// the goroutine path's now, the event loops' as of their last sweep (at most hostSweep
// ago, ages brought up to now; those under upstream.SlowAfter are not kept).
func (p *Proxy) Exchanges(minAge time.Duration) []upstream.Exchange {
	out := p.opts.Upstreams.Exchanges(minAge)
	p.mu.Lock()
	var loops []*hloop
	for _, l := range p.listeners {
		loops = append(loops, l.eventLoops()...)
	}
	p.mu.Unlock()
	now := time.Now()
	for _, h := range loops {
		sp := h.slow.Load()
		if sp == nil {
			continue
		}
		for _, e := range sp.list {
			e.Age += now.Sub(sp.at)
			if e.Age >= minAge {
				out = append(out, e)
			}
		}
	}
	upstream.SortExchanges(out)
	return out
}
