package config

import (
	"errors"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
)

func inline(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}

func refMetadata(t *testing.T, md *corev3.Metadata, ref *tlsv3.SdsSecretConfig) *corev3.Metadata {
	t.Helper()
	a, err := anypb.New(ref)
	if err != nil {
		t.Fatal(err)
	}
	if md == nil {
		md = &corev3.Metadata{}
	}
	md.TypedFilterMetadata = map[string]*anypb.Any{contract.SecretRefMetadataKey: a}
	return md
}

func adsRef(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
}

// queueCluster is the queue cluster for user, naming its password's secret ref.
func queueCluster(t *testing.T, user string, ref *tlsv3.SdsSecretConfig) *clusterv3.Cluster {
	md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		contract.QueueMetadataKey: contract.QueueMeta{URL: "nats://127.0.0.1:4222", User: user}.Encode()}}
	return &clusterv3.Cluster{Name: contract.QueueClusterName, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout: durationpb.New(1e9), Metadata: refMetadata(t, md, ref)}
}

// A cluster naming a secret that has not arrived waits (as Envoy warms it): the build is
// incomplete and names the secret, nothing is NACKed; once it arrives the credential is
// filled in.
func TestMissingSecretWaits(t *testing.T) {
	name := contract.QueueSecretName("shop", "")
	c := queueCluster(t, "ns.shop", adsRef(name))
	if err := Validate(resourcev3.ClusterType, c); err != nil {
		t.Fatalf("a cluster naming a secret was refused: %v", err)
	}
	res := Resources{resourcev3.ClusterType: {c.Name: c}}
	if got := SecretSubscriptions(res); len(got) != 1 || got[0] != name {
		t.Fatalf("subscriptions %v, want [%s]", got, name)
	}
	_, err := Build(res, nil)
	var inc *IncompleteError
	if !errors.As(err, &inc) || !strings.Contains(err.Error(), "secret "+name) {
		t.Fatalf("Build without the secret = %v, want incomplete naming secret %s", err, name)
	}
	sec := &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secrets: map[string]*corev3.DataSource{contract.QueueSecretPassword: inline("pw-1")}}}}
	if err := Validate(resourcev3.SecretType, sec); err != nil {
		t.Fatal(err)
	}
	res[resourcev3.SecretType] = map[string]proto.Message{name: sec}
	cfg, err := Build(res, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q := cfg.Clusters[contract.QueueClusterName].Queue; q.User != "ns.shop" || q.Password != "pw-1" {
		t.Fatalf("queue credential %+v, want user ns.shop with the secret's password", q)
	}
}

// What the sidecar refuses (NACKs), with a message naming the secret and never its value:
// a secret that is not generic, one whose value is not inline or too large, an empty
// generic secret, a reference that is not over ADS or has no name.
func TestSecretsRefused(t *testing.T) {
	big := strings.Repeat("x", contract.MaxSecretBytes+1)
	for name, c := range map[string]struct {
		typ  string
		m    proto.Message
		want string
	}{
		"tls certificate": {resourcev3.SecretType, &tlsv3.Secret{Name: "s", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{}}}, "only generic_secret"},
		"file": {resourcev3.SecretType, &tlsv3.Secret{Name: "s", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/passwd"}}}}}, "inline"},
		"oversized": {resourcev3.SecretType, &tlsv3.Secret{Name: "s", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: inline(big)}}}, "over the limit"},
		"empty":     {resourcev3.SecretType, &tlsv3.Secret{Name: "s", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{}}}, "exactly one"},
		"no name":   {resourcev3.SecretType, &tlsv3.Secret{Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{Secret: inline("pw")}}}, "without a name"},
		"not ads":   {resourcev3.ClusterType, queueCluster(t, "u", &tlsv3.SdsSecretConfig{Name: "queue/a"}), "must be ads"},
		"ref named": {resourcev3.ClusterType, queueCluster(t, "u", adsRef("")), "no name"},
	} {
		err := Validate(c.typ, c.m)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v, want an error containing %q", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), big[:64]) {
			t.Errorf("%s: the error holds the secret's value", name)
		}
	}
}

// A queue secret with a password for a cluster without a user, or an unknown key, is an
// error naming the secret: it cannot be a credential.
func TestQueueSecretMismatch(t *testing.T) {
	name := "queue/shop"
	for key, user := range map[string]string{contract.QueueSecretPassword: "", "apikey": "ns.shop"} {
		c := queueCluster(t, user, adsRef(name))
		sec := &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secrets: map[string]*corev3.DataSource{key: inline("v")}}}}
		_, err := Build(Resources{resourcev3.ClusterType: {c.Name: c}, resourcev3.SecretType: {name: sec}}, nil)
		var inc *IncompleteError
		if err == nil || errors.As(err, &inc) || !strings.Contains(err.Error(), name) {
			t.Errorf("key %q, user %q: Build = %v, want an error naming the secret", key, user, err)
		}
	}
}

// An external cluster's JWT credential: the jwt and seed keys fill QueueMeta.JWT and Seed;
// one without the other, or either empty, is an error naming the secret, never its values.
func TestQueueSecretJWTAndSeed(t *testing.T) {
	name := "queue/shop"
	build := func(vals map[string]string) (*Config, error) {
		c := queueCluster(t, "ns.shop", adsRef(name))
		ds := map[string]*corev3.DataSource{}
		for k, v := range vals {
			ds[k] = inline(v)
		}
		sec := &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{Secrets: ds}}}
		return Build(Resources{resourcev3.ClusterType: {c.Name: c}, resourcev3.SecretType: {name: sec}}, nil)
	}
	cfg, err := build(map[string]string{contract.QueueSecretJWT: "the-jwt", contract.QueueSecretSeed: "SUTHESEED"})
	if err != nil {
		t.Fatal(err)
	}
	if q := cfg.Clusters[contract.QueueClusterName].Queue; q.JWT != "the-jwt" || q.Seed != "SUTHESEED" || q.Password != "" || q.Token != "" {
		t.Fatalf("queue credential %+v, want the secret's JWT and seed only", q)
	}
	for what, vals := range map[string]map[string]string{
		"jwt alone":  {contract.QueueSecretJWT: "the-jwt"},
		"seed alone": {contract.QueueSecretSeed: "SUTHESEED"},
		"empty seed": {contract.QueueSecretJWT: "the-jwt", contract.QueueSecretSeed: ""},
	} {
		_, err := build(vals)
		var inc *IncompleteError
		if err == nil || errors.As(err, &inc) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: Build = %v, want an error naming the secret", what, err)
		} else if strings.Contains(err.Error(), "the-jwt") || strings.Contains(err.Error(), "SUTHESEED") {
			t.Errorf("%s: the error holds a secret value: %v", what, err)
		}
	}
}
