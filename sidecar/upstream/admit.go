package upstream

import (
	"time"

	"github.com/weftmesh/weft/sidecar/config"
)

// Outcome classifies one upstream attempt for outlier detection.
type Outcome int

// Attempt outcomes.
const (
	Success      Outcome = iota // any non-5xx response
	ServerError                 // 500, 501, 505+
	GatewayError                // 502, 503, 504, connect failure, reset, timeout
)

// Overflow names the circuit breaker that refused a request.
type Overflow string

// Circuit breakers.
const (
	OverflowRequests Overflow = "requests"
	OverflowPending  Overflow = "pending"
	OverflowRetries  Overflow = "retries"
)

// Admit applies the cluster's request and pending-request circuit breakers. With HTTP/1.1
// upstreams a request beyond max_connections must wait for a connection, so it counts as
// pending; past max_pending_requests it overflows. On success the caller must call Done.
func (c *Cluster) Admit() (Overflow, bool) {
	l := c.cfg.Load().Limits
	n := c.active.Add(1)
	if n > int64(l.MaxRequests) {
		c.active.Add(-1)
		c.Stats.OverflowRequests.Add(1)
		return OverflowRequests, false
	}
	if n > int64(l.MaxConnections) && n-int64(l.MaxConnections) > int64(l.MaxPending) {
		c.active.Add(-1)
		c.Stats.OverflowPending.Add(1)
		return OverflowPending, false
	}
	return "", true
}

// Done releases what Admit took.
func (c *Cluster) Done() { c.active.Add(-1) }

// AdmitRetry applies the max_retries circuit breaker; on success call RetryDone.
func (c *Cluster) AdmitRetry() bool {
	if c.retries.Add(1) > int64(c.cfg.Load().Limits.MaxRetries) {
		c.retries.Add(-1)
		c.Stats.OverflowRetries.Add(1)
		return false
	}
	c.Stats.Retries.Add(1)
	return true
}

// RetryDone releases what AdmitRetry took.
func (c *Cluster) RetryDone() { c.retries.Add(-1) }

// Start marks a request outstanding on h (least request counts these).
func (h *Host) Start() { h.active.Add(1) }

// Report records an attempt's outcome on h and ejects it when outlier detection says so.
func (c *Cluster) Report(h *Host, o Outcome) {
	h.active.Add(-1)
	od := c.cfg.Load().Outlier
	if o == Success {
		if h.consecutive5xx.Load() != 0 {
			h.consecutive5xx.Store(0)
		}
		if h.consecutiveGw.Load() != 0 {
			h.consecutiveGw.Store(0)
		}
		return
	}
	if od == nil {
		return
	}
	n5 := h.consecutive5xx.Add(1)
	var ngw uint32
	if o == GatewayError {
		ngw = h.consecutiveGw.Add(1)
	} else {
		h.consecutiveGw.Store(0)
	}
	if (od.Enforce5xx && od.Consecutive5xx > 0 && n5 >= od.Consecutive5xx) ||
		(od.EnforceGateway && od.ConsecutiveGateway > 0 && ngw >= od.ConsecutiveGateway) {
		c.eject(h, od)
	}
}

// eject takes h out of rotation for base_ejection_time × its ejection count, unless that
// would exceed max_ejection_percent of the cluster's hosts (one host may always be ejected,
// as in current Envoy).
func (c *Cluster) eject(h *Host, od *config.Outlier) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.ejected.Load() {
		return
	}
	hosts := c.Hosts()
	ejected := 0
	for _, x := range hosts {
		if x.ejected.Load() {
			ejected++
		}
	}
	if ejected > 0 && uint32((ejected+1)*100) > od.MaxEjectionPercent*uint32(len(hosts)) {
		return
	}
	n := h.ejections.Add(1)
	h.ejectedUntil.Store(c.mgr.clock.Now().Add(time.Duration(n) * od.BaseEjection).UnixNano())
	h.ejected.Store(true)
	h.consecutive5xx.Store(0)
	h.consecutiveGw.Store(0)
	c.Stats.Ejections.Add(1)
}

// sweep returns ejected hosts whose time is up; it runs every outlier interval, so an
// ejection lasts at least its computed time and at most one interval more, as in Envoy.
func (c *Cluster) sweep(now time.Time) {
	for _, h := range c.Hosts() {
		if h.ejected.Load() && now.UnixNano() >= h.ejectedUntil.Load() {
			h.ejected.Store(false)
		}
	}
}
