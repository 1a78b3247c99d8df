package upstream

import (
	"context"
	"net/http"

	"github.com/weftmesh/weft/sidecar/config"
)

// startBackground runs the outlier sweep and the active health checker the cluster's
// config asks for, returning the function that stops them.
func (c *Cluster) startBackground(cc *config.Cluster) func() {
	ctx, cancel := context.WithCancel(c.mgr.ctx)
	if od := cc.Outlier; od != nil {
		go func() {
			t := c.mgr.clock.NewTicker(od.Interval)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case now := <-t.C():
					c.sweep(now)
				}
			}
		}()
	}
	if hc := cc.HealthCheck; hc != nil {
		go c.healthLoop(ctx, hc)
	}
	return cancel
}

// healthLoop probes every host's health path each interval. A host fails after
// unhealthy_threshold consecutive failures and recovers after healthy_threshold
// consecutive successes. Hosts start healthy (EDS readiness already gates them).
func (c *Cluster) healthLoop(ctx context.Context, hc *config.HealthCheck) {
	client := &http.Client{Timeout: hc.Timeout, Transport: &http.Transport{DisableKeepAlives: false, MaxIdleConnsPerHost: 1}}
	t := c.mgr.clock.NewTicker(hc.Interval)
	defer t.Stop()
	for {
		for _, h := range c.Hosts() {
			host := hc.Host
			if host == "" {
				host = c.Name
			}
			ok := probe(ctx, client, "http://"+h.Address+hc.Path, host)
			c.mu.Lock()
			switch {
			case ok && h.hcRun < 0, !ok && h.hcRun > 0:
				h.hcRun = 0
			}
			if ok {
				h.hcRun++
				if h.hcFailed.Load() && uint32(h.hcRun) >= hc.Healthy {
					h.hcFailed.Store(false)
				}
			} else {
				h.hcRun--
				if !h.hcFailed.Load() && uint32(-h.hcRun) >= hc.Unhealthy {
					h.hcFailed.Store(true)
				}
			}
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

func probe(ctx context.Context, client *http.Client, url, host string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	req.Host = host
	req.Header.Set("User-Agent", "weft-health-check")
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}
