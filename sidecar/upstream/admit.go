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
	GatewayError                // 502, 503, 504, a reset after the response began, a timeout
	// LocalOriginFailure is a failure to reach the host at all: the connect was refused,
	// timed out or found no route, or the connection was reset before any response byte.
	// Outlier detection counts it as a gateway error, as Envoy does when it does not split
	// local-origin errors, and on its own as a consecutive local-origin failure (below).
	LocalOriginFailure
	// NotSent is an attempt that never reached its host: no connection could be had (the
	// pool was full, or the wait for a connection timed out). It counts neither way.
	NotSent
)

// Ejection on connect failures. A host that cannot be connected to three times running is
// almost surely gone (its pod was deleted while the control plane could not say so) or
// cannot take connections; sending it more requests only fails them. So these failures
// eject a host even when the cluster has no outlier_detection (Envoy's
// consecutive_local_origin_failure, default 5, applies only with outlier_detection set and
// split_external_local_origin_errors on). Three, not five: at 20 requests a second over
// two endpoints and no retries, each failure is a lost call, and 3 + 3 (a second try after
// the 30 s ejection) keeps a dead endpoint under 1 % of a minute's calls. Without
// outlier_detection the ejection lasts DefaultLocalOriginEjection × its ejection count and
// never takes out a cluster's last available host: with nowhere else to go, the request
// gets the connect error, and the cold-start holder and EDS decide.
const (
	DefaultConsecutiveLocalOriginFailure = 3
	DefaultLocalOriginEjection           = 30 * time.Second // Envoy's base_ejection_time
	// defaultLocalOriginMaxEjectionPercent bounds these ejections: half the hosts at most
	// (one may always go).
	defaultLocalOriginMaxEjectionPercent = 50
)

// Overflow names the circuit breaker that refused a request.
type Overflow string

// Circuit breakers.
const (
	OverflowRequests Overflow = "requests"
	OverflowPending  Overflow = "pending"
	OverflowRetries  Overflow = "retries"
)

// Admit applies the cluster's max_requests circuit breaker. max_connections and
// max_pending_requests apply when an attempt needs a connection (OpenConn, connlimit.go).
// On success the caller must call Done.
func (c *Cluster) Admit() (Overflow, bool) {
	l := c.cfg.Load().Limits
	if n := c.active.Add(1); n > int64(l.MaxRequests) {
		c.active.Add(-1)
		c.Stats.OverflowRequests.Add(1)
		return OverflowRequests, false
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
	if o == NotSent {
		return
	}
	od := c.cfg.Load().Outlier
	if o == Success {
		if h.consecutive5xx.Load() != 0 {
			h.consecutive5xx.Store(0)
		}
		if h.consecutiveGw.Load() != 0 {
			h.consecutiveGw.Store(0)
		}
		if h.consecutiveLocal.Load() != 0 {
			h.consecutiveLocal.Store(0)
		}
		return
	}
	if o == LocalOriginFailure {
		if h.consecutiveLocal.Add(1) >= DefaultConsecutiveLocalOriginFailure {
			if od == nil {
				c.ejectLocalOrigin(h)
				return
			}
			if c.eject(h, od); h.ejected.Load() {
				return
			}
		}
	} else if h.consecutiveLocal.Load() != 0 {
		h.consecutiveLocal.Store(0) // the host answered, if badly: it is reachable
	}
	if od == nil {
		return
	}
	n5 := h.consecutive5xx.Add(1)
	var ngw uint32
	if o == GatewayError || o == LocalOriginFailure {
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
	if h.isEjected() || !c.mayEject(od.MaxEjectionPercent) {
		return
	}
	c.ejectFor(h, od.BaseEjection)
}

// mayEject reports whether one more host may be ejected under maxPercent (one host may
// always be ejected, as in current Envoy). c.mu is held.
func (c *Cluster) mayEject(maxPercent uint32) bool {
	hosts := c.Hosts()
	ejected := 0
	for _, x := range hosts {
		if x.isEjected() {
			ejected++
		}
	}
	return ejected == 0 || uint32((ejected+1)*100) <= maxPercent*uint32(len(hosts))
}

// ejectFor ejects h for base × its ejection count. c.mu is held.
func (c *Cluster) ejectFor(h *Host, base time.Duration) {
	n := h.ejections.Add(1)
	h.ejectedUntil.Store(c.mgr.clock.Now().Add(time.Duration(n) * base).UnixNano())
	h.ejected.Store(true)
	h.consecutive5xx.Store(0)
	h.consecutiveGw.Store(0)
	h.consecutiveLocal.Store(0)
	c.Stats.Ejections.Add(1)
}

// ejectLocalOrigin ejects h, which could not be reached DefaultConsecutiveLocalOriginFailure
// times running, in a cluster without outlier_detection: only while another host is
// available to take its requests.
func (c *Cluster) ejectLocalOrigin(h *Host) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.isEjected() || !c.mayEject(defaultLocalOriginMaxEjectionPercent) {
		return
	}
	other := false
	for _, x := range c.Hosts() {
		if x != h && x.Available() {
			other = true
			break
		}
	}
	if !other {
		return
	}
	c.ejectFor(h, DefaultLocalOriginEjection)
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
