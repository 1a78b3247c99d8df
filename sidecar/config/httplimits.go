package config

import (
	"fmt"
	"time"

	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// ConnectionLimitFilterName is Envoy's network filter that caps a listener's connections;
// the sidecar accepts it before the HTTP connection manager.
const ConnectionLimitFilterName = "envoy.filters.network.connection_limit"

// HTTPLimits bound what one downstream connection of an HTTP listener may cost: how much
// of a request head it may make the sidecar buffer, how long it may take, and how many
// such connections there may be. Every field comes from the listener's resources in
// Envoy's names; an absent field takes the default below.
type HTTPLimits struct {
	// MaxHeadBytes bounds a request head (HCM max_request_headers_kb).
	MaxHeadBytes int
	// MaxHeaders bounds its header fields (HCM common_http_protocol_options.max_headers_count).
	MaxHeaders int
	// HeadTimeout bounds the time a request head may take, from its first byte (HCM
	// request_headers_timeout); a new connection's first head counts from the accept, so
	// a connection that never sends a byte is closed after it too. 0: no limit.
	HeadTimeout time.Duration
	// IdleTimeout closes a connection that has no request in flight after its last
	// response (HCM common_http_protocol_options.idle_timeout). 0: no limit.
	IdleTimeout time.Duration
	// MaxConnections caps the listener's downstream connections; more are closed at once
	// (connection_limit filter max_connections).
	MaxConnections int
}

// Defaults for a field the control plane leaves out.
const (
	// DefaultMaxHeadBytes and DefaultMaxHeaders are Envoy's: 60 KiB and 100 fields.
	DefaultMaxHeadBytes = 60 << 10
	DefaultMaxHeaders   = 100
	// DefaultHeadTimeout: Envoy has none by default (Istio's edge setting is 60 s). A mesh
	// peer is a program that writes a request head in one go over a fast network, so 10 s is
	// thousands of round trips; it is also how long Linkerd waits for a new connection's
	// first bytes. It bounds how long a slowloris connection holds a descriptor.
	DefaultHeadTimeout = 10 * time.Second
	// DefaultIdleTimeout: Envoy's is 1 h. Clients close idle pooled connections well
	// before (Go's http.Transport after 90 s), and each idle connection costs the sidecar a
	// descriptor, so 5 min.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultMaxConnections per listener: Envoy has no per-listener default (its edge
	// example caps all listeners at 50,000). 10,000 leaves the sidecar descriptors for its
	// upstream connections under a typical 65,536 limit with both HTTP listeners full.
	DefaultMaxConnections = 10_000
	// maxHeadBytesLimit is Envoy's upper bound for max_request_headers_kb (8 MiB).
	maxHeadBytesLimit = 8192 << 10
)

// DefaultHTTPLimits are the limits of a listener whose resources set none.
func DefaultHTTPLimits() HTTPLimits {
	return HTTPLimits{MaxHeadBytes: DefaultMaxHeadBytes, MaxHeaders: DefaultMaxHeaders, HeadTimeout: DefaultHeadTimeout,
		IdleTimeout: DefaultIdleTimeout, MaxConnections: DefaultMaxConnections}
}

// decodeHCMLimits reads the HCM's limit fields into lim.
func decodeHCMLimits(h *hcmv3.HttpConnectionManager, lim *HTTPLimits, where string) error {
	if kb := h.GetMaxRequestHeadersKb(); kb != nil {
		if kb.GetValue() == 0 || int(kb.GetValue())<<10 > maxHeadBytesLimit {
			return fmt.Errorf("%s: max_request_headers_kb %d must be between 1 and 8192", where, kb.GetValue())
		}
		lim.MaxHeadBytes = int(kb.GetValue()) << 10
	}
	if d := h.GetRequestHeadersTimeout(); d != nil {
		if d.AsDuration() < 0 {
			return fmt.Errorf("%s: request_headers_timeout is negative", where)
		}
		lim.HeadTimeout = d.AsDuration()
	}
	if po := h.GetCommonHttpProtocolOptions(); po != nil {
		if err := onlyFields(po, where+" common_http_protocol_options", "idle_timeout", "max_headers_count"); err != nil {
			return err
		}
		if n := po.GetMaxHeadersCount(); n != nil {
			if n.GetValue() == 0 {
				return fmt.Errorf("%s: common_http_protocol_options.max_headers_count must be at least 1", where)
			}
			lim.MaxHeaders = int(n.GetValue())
		}
		if d := po.GetIdleTimeout(); d != nil {
			if d.AsDuration() < 0 {
				return fmt.Errorf("%s: common_http_protocol_options.idle_timeout is negative", where)
			}
			lim.IdleTimeout = d.AsDuration()
		}
	}
	return nil
}

// decodeConnectionLimit reads an envoy.filters.network.connection_limit filter.
func decodeConnectionLimit(cl *connlimitv3.ConnectionLimit, lim *HTTPLimits, where string) error {
	where += " connection_limit"
	if err := onlyFields(cl, where, "stat_prefix", "max_connections"); err != nil {
		return err
	}
	n := cl.GetMaxConnections().GetValue()
	if n == 0 || n > 1<<30 {
		return fmt.Errorf("%s: max_connections %d must be between 1 and 2^30", where, n)
	}
	lim.MaxConnections = int(n)
	return nil
}
