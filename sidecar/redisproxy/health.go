package redisproxy

import (
	"bytes"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// passiveFailure counts a connection failure (connect error, timeout, EOF)
// and ejects the server when the pool's failureLimit is reached, as twemproxy
// does with server_failure_limit.
func (u *upstream) passiveFailure() {
	pl := u.pool.Load()
	n := u.failures.Add(1)
	if pl.cfg.FailureLimit > 0 && int(n) >= pl.cfg.FailureLimit {
		u.markDown()
	}
}

// markDown ejects the server; in remap mode its keys move to live servers.
func (u *upstream) markDown() {
	if u.down.Swap(true) {
		return
	}
	u.ejections.Add(1)
	pl := u.pool.Load()
	if pl.cfg.EjectMode == EjectRemap {
		pl.rebuild()
	}
}

// markUp readmits the server after a successful probe.
func (u *upstream) markUp() {
	u.failures.Store(0)
	if !u.down.Swap(false) {
		return
	}
	pl := u.pool.Load()
	if pl.cfg.EjectMode == EjectRemap {
		pl.rebuild()
	}
}

// healthLoop probes the server: every HealthCheck.Interval when active
// checks are configured, and every RetryTimeout while it is ejected. An
// ejected server only comes back after healthy_threshold successful PINGs
// (at least one), unlike twemproxy, which re-adds it blindly.
func (p *Proxy) healthLoop(u *upstream) {
	var okRun, badRun int
	for {
		pl := u.pool.Load()
		hc := pl.cfg.HealthCheck
		interval := pl.cfg.RetryTimeout
		if hc != nil && hc.Interval > 0 {
			interval = hc.Interval
		}
		if interval <= 0 {
			interval = 30 * time.Second
		}
		t := p.clock.NewTimer(interval)
		select {
		case <-u.stop:
			t.Stop()
			return
		case <-t.C():
		}
		active := hc != nil && hc.Interval > 0
		if !active && !u.down.Load() {
			continue
		}
		timeout := time.Second
		if hc != nil && hc.Timeout > 0 {
			timeout = hc.Timeout
		}
		if probe(u, timeout) {
			okRun, badRun = okRun+1, 0
			need := 1
			if hc != nil && hc.HealthyThreshold > 1 {
				need = hc.HealthyThreshold
			}
			if u.down.Load() && okRun >= need {
				u.markUp()
			}
		} else {
			okRun, badRun = 0, badRun+1
			need := 1
			if hc != nil && hc.UnhealthyThreshold > 1 {
				need = hc.UnhealthyThreshold
			}
			if active && badRun >= need {
				u.markDown()
			}
		}
	}
}

// probe sends AUTH (when configured) and PING on a fresh connection and
// reports whether the server answered PONG.
func probe(u *upstream, timeout time.Duration) bool {
	c, err := u.dial(timeout, timeout)
	if err != nil {
		return false
	}
	defer c.Close()
	if err := upstreamAuth(c, u.user, u.pass, timeout); err != nil {
		return false
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return false
	}
	raw, err := resp.NewReader(c).ReadReply()
	return err == nil && bytes.Equal(raw, []byte("+PONG\r\n"))
}
