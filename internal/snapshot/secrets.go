package snapshot

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/contract"
)

// Secrets travel over SDS (docs/zero-trust.md): a listener or cluster that needs a password
// or token carries only the secret's name (secretRef, under contract.SecretRefMetadataKey),
// and the view's snapshot holds exactly the secrets its listeners and clusters name, so a
// sidecar subscribes to every secret of its view and to nothing else, and a rotated password
// is pushed as one SDS update while its listener and cluster stay at their versions.

// genericSecret is an SDS Secret holding one value (a Redis password).
func genericSecret(name, value string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: value}}}}}
}

// genericSecrets is an SDS Secret holding several values by key (the queue's credential).
func genericSecrets(name string, values map[string]string) *tlsv3.Secret {
	m := make(map[string]*corev3.DataSource, len(values))
	for k, v := range values {
		m[k] = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: v}}
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{Secrets: m}}}
}

// withSecretRef returns md (a new one when nil) naming secret name under
// contract.SecretRefMetadataKey, as Envoy names an SDS secret: an SdsSecretConfig whose
// sds_config is ADS.
func withSecretRef(md *corev3.Metadata, name string) *corev3.Metadata {
	if md == nil {
		md = &corev3.Metadata{}
	}
	ref, err := anypb.New(&tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()})
	if err != nil {
		panic(err) // a well-formed message always marshals
	}
	if md.TypedFilterMetadata == nil {
		md.TypedFilterMetadata = map[string]*anypb.Any{}
	}
	md.TypedFilterMetadata[contract.SecretRefMetadataKey] = ref
	return md
}

// sdsPlaceholder stands where Envoy's redis_proxy reads a password inline: a file name
// that names the SDS secret. A sidecar that knows SDS secrets ignores it (the secret the
// resource names replaces it); one from before SDS secrets accepts inline passwords only,
// so it refuses the listener and keeps its last good version instead of serving the pool
// without a password.
func sdsPlaceholder(secret string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "sds:" + secret}}
}

// viewSecrets collects the secrets of a view's resources, sorted by name, without
// duplicates (two listeners of one view never share a pool, but be safe).
type viewSecrets struct {
	byName map[string]*tlsv3.Secret
}

func (s *viewSecrets) add(sec *tlsv3.Secret) {
	if sec == nil {
		return
	}
	if s.byName == nil {
		s.byName = map[string]*tlsv3.Secret{}
	}
	s.byName[sec.GetName()] = sec
}

func (s *viewSecrets) sorted() []proto.Message {
	out := make([]proto.Message, 0, len(s.byName))
	for _, n := range sortedKeys(s.byName) {
		out = append(out, s.byName[n])
	}
	return out
}
