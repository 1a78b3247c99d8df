package config

import (
	"fmt"

	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// UpstreamProtocol is the HTTP version a cluster's connections speak, from its
// HttpProtocolOptions (Envoy's upstream_protocol_options).
type UpstreamProtocol int

// Upstream protocols. The zero value is Envoy's default for a cluster without
// HttpProtocolOptions: HTTP/1.1.
const (
	UpstreamHTTP1 UpstreamProtocol = iota
	// UpstreamHTTP2 is HTTP/2 with prior knowledge (h2c): explicit_http_config.http2_protocol_options.
	UpstreamHTTP2
	// UpstreamDownstream speaks what the caller spoke (use_downstream_protocol_config):
	// HTTP/2 upstream for an HTTP/2 caller, HTTP/1.1 for an HTTP/1 one.
	UpstreamDownstream
)

func (p UpstreamProtocol) String() string {
	switch p {
	case UpstreamHTTP2:
		return "HTTP2"
	case UpstreamDownstream:
		return "Downstream"
	}
	return "HTTP1"
}

// ForCaller is the protocol a request from a caller that spoke HTTP/2 (callerH2) or not
// goes upstream with.
func (p UpstreamProtocol) ForCaller(callerH2 bool) UpstreamProtocol {
	if p == UpstreamDownstream {
		if callerH2 {
			return UpstreamHTTP2
		}
		return UpstreamHTTP1
	}
	return p
}

// DefaultMaxStreamsPerConn bounds the concurrent streams the sidecar opens on one upstream
// HTTP/2 connection when the cluster does not say (http2_protocol_options.
// max_concurrent_streams); the peer's SETTINGS_MAX_CONCURRENT_STREAMS lowers it further.
// 100 is the RFC 9113 §6.5.2 recommended minimum a server should allow, so a conforming
// server never makes the sidecar wait below it.
const DefaultMaxStreamsPerConn = 100

// The gRPC retry conditions (Envoy's x-envoy-retry-grpc-on): a response whose grpc-status,
// in its headers (a Trailers-Only response), is the named code is retried.
const (
	RetryGRPCCancelled RetryOn = RetryRetriableStatusCodes << (1 + iota)
	RetryGRPCDeadlineExceeded
	RetryGRPCInternal
	RetryGRPCResourceExhausted
	RetryGRPCUnavailable
)

// grpcRetryOn maps an Envoy gRPC retry condition to its bit; 0 for any other name.
func grpcRetryOn(name string) RetryOn {
	switch name {
	case "cancelled":
		return RetryGRPCCancelled
	case "deadline-exceeded":
		return RetryGRPCDeadlineExceeded
	case "internal":
		return RetryGRPCInternal
	case "resource-exhausted":
		return RetryGRPCResourceExhausted
	case "unavailable":
		return RetryGRPCUnavailable
	}
	return 0
}

// RetriesGRPCCode reports whether on retries a response carrying gRPC status code.
func (on RetryOn) RetriesGRPCCode(code int) bool {
	switch code {
	case 1:
		return on&RetryGRPCCancelled != 0
	case 4:
		return on&RetryGRPCDeadlineExceeded != 0
	case 8:
		return on&RetryGRPCResourceExhausted != 0
	case 13:
		return on&RetryGRPCInternal != 0
	case 14:
		return on&RetryGRPCUnavailable != 0
	}
	return false
}

// decodeUpstreamProtocol reads which HTTP version the cluster speaks upstream from its
// HttpProtocolOptions: explicit_http_config with http_protocol_options (HTTP/1.1) or
// http2_protocol_options (h2c prior knowledge), or use_downstream_protocol_config; unset is
// HTTP/1.1 as in Envoy. Of the HTTP/2 options only max_concurrent_streams is used (the cap
// on streams per upstream connection); the others are refused by name.
func decodeUpstreamProtocol(po *httpupv3.HttpProtocolOptions, where string, out *Cluster) error {
	out.Protocol, out.MaxStreamsPerConn = UpstreamHTTP1, 0
	switch {
	case po.GetExplicitHttpConfig() != nil:
		ex := po.GetExplicitHttpConfig()
		switch {
		case ex.GetHttp2ProtocolOptions() != nil:
			out.Protocol = UpstreamHTTP2
			h2 := ex.GetHttp2ProtocolOptions()
			if err := onlyFields(h2, where+" explicit_http_config.http2_protocol_options", "max_concurrent_streams"); err != nil {
				return err
			}
			out.MaxStreamsPerConn = h2.GetMaxConcurrentStreams().GetValue()
		case ex.GetHttp3ProtocolOptions() != nil:
			return fmt.Errorf("%s: explicit_http_config.http3_protocol_options is not supported; use http_protocol_options or http2_protocol_options", where)
		}
	case po.GetUseDownstreamProtocolConfig() != nil:
		out.Protocol = UpstreamDownstream
		h2 := po.GetUseDownstreamProtocolConfig().GetHttp2ProtocolOptions()
		if err := onlyFields(h2, where+" use_downstream_protocol_config.http2_protocol_options", "max_concurrent_streams"); err != nil {
			return err
		}
		out.MaxStreamsPerConn = h2.GetMaxConcurrentStreams().GetValue()
	case po.GetAutoConfig() != nil:
		return fmt.Errorf("%s: auto_config needs ALPN over TLS, which the sidecar does not originate; use explicit_http_config or use_downstream_protocol_config", where)
	}
	if out.Protocol != UpstreamHTTP1 && out.MaxStreamsPerConn == 0 {
		out.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	return nil
}
