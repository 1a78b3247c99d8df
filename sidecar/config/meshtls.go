package config

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
)

// Istio's auto-mTLS, as the control plane sends it (docs/mtls.md "Which endpoints get
// mutual TLS"): a Service cluster carries two transport_socket_matches, {tlsMode: weft} →
// TLS and {} → plaintext, and each endpoint whose pod's sidecar terminates mesh TLS on its
// port carries filter_metadata envoy.transport_socket_match {tlsMode: weft}. The sidecar
// implements exactly this shape: the TLS is its own mutual TLS with the workload identity
// (upstream/meshtls.go), so any other match, transport socket or TLS setting is refused
// rather than ignored.

// decodeTransportSocketMatches reads c's transport_socket_matches into out.MeshTLS.
func decodeTransportSocketMatches(c *clusterv3.Cluster, where string, out *Cluster) error {
	for i, m := range c.GetTransportSocketMatches() {
		w := fmt.Sprintf("%s transport_socket_matches[%d]", where, i)
		if err := onlyFields(m, w, "name", "match", "transport_socket"); err != nil {
			return err
		}
		ts := m.GetTransportSocket()
		if err := onlyFields(ts, w+" transport_socket", "name", "typed_config"); err != nil {
			return err
		}
		fields := m.GetMatch().GetFields()
		switch {
		case len(fields) == 0:
			if err := isTransportSocket(ts, w, &rawbufferv3.RawBuffer{}); err != nil {
				return err
			}
		case len(fields) == 1 && fields[contract.TLSModeKey].GetStringValue() == contract.TLSModeWeft:
			if err := isTransportSocket(ts, w, &tlsv3.UpstreamTlsContext{}); err != nil {
				return err
			}
			out.MeshTLSMatch = true
		default:
			return fmt.Errorf("%s: match %v is not supported by the weft sidecar; only {%s: %s} (mutual TLS with the workload identity) and {} (plaintext)",
				w, m.GetMatch().AsMap(), contract.TLSModeKey, contract.TLSModeWeft)
		}
	}
	return nil
}

// isTransportSocket checks that ts is a transport socket of want's type with nothing set:
// the sidecar's own TLS or plaintext, whose settings come from elsewhere.
func isTransportSocket(ts *corev3.TransportSocket, where string, want proto.Message) error {
	tc := ts.GetTypedConfig()
	if tc == nil {
		return fmt.Errorf("%s: transport_socket without typed_config", where)
	}
	got := want.ProtoReflect().New().Interface()
	if err := tc.UnmarshalTo(got); err != nil {
		return fmt.Errorf("%s: transport_socket typed_config is %s, want %s", where, tc.GetTypeUrl(), want.ProtoReflect().Descriptor().FullName())
	}
	// The mesh TLS context is empty: certificates, trust bundle and ALPN are the sidecar's
	// (workload identity, the cluster's HTTP version). A set field would be ignored: refuse it.
	return onlyFields(got, where+" transport_socket")
}

// endpointMeshTLS reports whether lbe's metadata selects the {tlsMode: weft} match.
func endpointMeshTLS(md *corev3.Metadata) bool {
	s := md.GetFilterMetadata()[contract.TransportSocketMatchKey]
	return s.GetFields()[contract.TLSModeKey].GetStringValue() == contract.TLSModeWeft
}
