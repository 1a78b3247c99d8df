package httpproxy

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// mirror sends a fire-and-forget copy of out to cluster. Its response is discarded and
// its failure never affects the caller. The Host gets Envoy's "-shadow" suffix so the
// shadow can tell mirrored traffic apart.
func (p *Proxy) mirror(out *upstream.Request, cluster string, timeout time.Duration) {
	c := p.opts.Upstreams.Get(cluster)
	if c == nil {
		return
	}
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	req := *out
	req.Header = out.Header.Clone()
	req.Host = shadowHost(out.Host)
	go func() {
		h := c.Pick(0, false, nil)
		if h == nil {
			return
		}
		if _, ok := c.Admit(); !ok {
			return
		}
		defer c.Done()
		start := time.Now()
		h.Start()
		resp, err := c.RoundTrip(context.Background(), &req, h, time.Now().Add(timeout))
		if err != nil {
			c.Report(h, upstream.GatewayError)
			c.Stats.Observe(0, time.Since(start))
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.Report(h, upstream.Success)
		c.Stats.Observe(resp.StatusCode, time.Since(start))
	}()
}

// shadowHost appends "-shadow" to the host part, keeping any port: "a:80" → "a-shadow:80".
func shadowHost(host string) string {
	if h, port, err := net.SplitHostPort(host); err == nil {
		return net.JoinHostPort(h+"-shadow", port)
	}
	return host + "-shadow"
}

// requestHash computes the ring-hash key from the route's hash policies, combining
// several the way Envoy does (rotate left one bit, xor). podIP is what useSourceIP hashes
// for callers on loopback (sourceIP). hasHash is false when no policy
// produced a value, in which case the ring picks at random.
//
// A cookie policy with a TTL whose cookie the request lacks generates one: the request hashes
// on the new value and setCookie is the Set-Cookie header the response must carry.
func requestHash(r *http.Request, route *config.Route, cc *config.Cluster, podIP netip.Addr) (hash uint64, hasHash bool, setCookie string) {
	if cc.LB != config.RingHash || len(route.HashPolicies) == 0 {
		return 0, false, ""
	}
	for _, hp := range route.HashPolicies {
		var v string
		switch hp.Kind {
		case config.HashHeader:
			v = r.Header.Get(hp.Name)
		case config.HashCookie:
			if ck, err := r.Cookie(hp.Name); err == nil {
				v = ck.Value
			} else if hp.CookieTTL > 0 {
				v = strconv.FormatUint(rand.Uint64(), 16)
				path := hp.CookiePath
				if path == "" {
					path = "/"
				}
				ck := &http.Cookie{Name: hp.Name, Value: v, Path: path, MaxAge: int(hp.CookieTTL.Seconds()), HttpOnly: true}
				setCookie = ck.String()
			}
		case config.HashQuery:
			v = r.URL.Query().Get(hp.Name)
		case config.HashSourceIP:
			v = sourceIP(r.RemoteAddr, podIP)
		}
		if v == "" {
			continue
		}
		hash = (hash<<1 | hash>>63) ^ xxhash.Sum64String(v)
		hasHash = true
		if hp.Terminal {
			break
		}
	}
	return hash, hasHash, setCookie
}
