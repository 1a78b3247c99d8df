package config

import (
	"errors"
	"fmt"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
)

// Secrets over SDS (docs/xds-contract.md, "Secrets"). A listener or cluster that needs a
// password or token names a generic secret under contract.SecretRefMetadataKey; the client
// subscribes to the names (SecretSubscriptions) and Build resolves them. A resource whose
// secret has not arrived waits, as Envoy warms a cluster or listener until its SDS secret
// arrives: Build returns *IncompleteError naming the secret, the config in force keeps
// serving, and nothing is NACKed.

// secretRef reads the secret name md carries ("" when none). The reference must be an
// SdsSecretConfig over ADS: the sidecar has one control-plane stream and no files.
func secretRef(md *corev3.Metadata) (string, error) {
	a, ok := md.GetTypedFilterMetadata()[contract.SecretRefMetadataKey]
	if !ok {
		return "", nil
	}
	var ref tlsv3.SdsSecretConfig
	if err := a.UnmarshalTo(&ref); err != nil {
		return "", fmt.Errorf("metadata %s: want an SdsSecretConfig: %w", contract.SecretRefMetadataKey, err)
	}
	if ref.GetName() == "" {
		return "", fmt.Errorf("metadata %s: the secret has no name", contract.SecretRefMetadataKey)
	}
	if ref.GetSdsConfig().GetAds() == nil {
		return "", fmt.Errorf("metadata %s: secret %s: sds_config must be ads (the sidecar fetches secrets on its ADS stream only)", contract.SecretRefMetadataKey, ref.GetName())
	}
	return ref.GetName(), nil
}

// decodeSecret checks an SDS Secret: only generic secrets with inline values, each at most
// contract.MaxSecretBytes. Errors name the secret, never its value.
func decodeSecret(s *tlsv3.Secret) (one string, many map[string]string, err error) {
	where := "secret " + s.GetName()
	if s.GetName() == "" {
		return "", nil, errors.New("secret without a name")
	}
	g := s.GetGenericSecret()
	if g == nil {
		return "", nil, fmt.Errorf("%s: only generic_secret is supported (TLS certificates come from the certificate service)", where)
	}
	if (g.GetSecret() == nil) == (len(g.GetSecrets()) == 0) {
		return "", nil, fmt.Errorf("%s: generic_secret needs exactly one of secret and secrets", where)
	}
	value := func(ds *corev3.DataSource, what string) (string, error) {
		v, err := inlineSecret(ds)
		if err != nil {
			return "", fmt.Errorf("%s: %s: %w", where, what, err)
		}
		if len(v) > contract.MaxSecretBytes {
			return "", fmt.Errorf("%s: %s is %d bytes, over the limit of %d", where, what, len(v), contract.MaxSecretBytes)
		}
		return v, nil
	}
	if g.GetSecret() != nil {
		one, err = value(g.GetSecret(), "secret")
		return one, nil, err
	}
	many = make(map[string]string, len(g.GetSecrets()))
	for k, ds := range g.GetSecrets() {
		if many[k], err = value(ds, "secrets["+k+"]"); err != nil {
			return "", nil, err
		}
	}
	return "", many, nil
}

// SecretSubscriptions returns the SDS secret names the given listeners and clusters name,
// sorted. The xDS client subscribes to exactly these, after the resources naming them.
func SecretSubscriptions(res Resources) []string {
	var out []string
	for _, t := range []string{resourcev3.ListenerType, resourcev3.ClusterType} {
		for _, m := range res[t] {
			md := m.(interface{ GetMetadata() *corev3.Metadata }).GetMetadata()
			if n, err := secretRef(md); err == nil && n != "" {
				out = append(out, n)
			}
		}
	}
	sort.Strings(out)
	return dedup(out)
}

// secretValue resolves name against the received secrets: its single value (secret), or
// its values by key (secrets). ok is false when it has not arrived.
func secretValue(secrets map[string]proto.Message, name string) (one string, many map[string]string, ok bool, err error) {
	m, ok := secrets[name]
	if !ok {
		return "", nil, false, nil
	}
	s, isSecret := m.(*tlsv3.Secret)
	if !isSecret {
		return "", nil, true, fmt.Errorf("secret %s: not an SDS Secret", name)
	}
	one, many, err = decodeSecret(s)
	return one, many, true, err
}

// resolveQueue fills the queue credential of c from its secret. It reports the secret's
// name when it has not arrived yet.
func resolveQueue(c *Cluster, ref string, secrets map[string]proto.Message) (missing string, err error) {
	if ref == "" || c.Queue == nil {
		return "", nil
	}
	_, vals, ok, err := secretValue(secrets, ref)
	if !ok {
		return ref, nil
	}
	if err != nil {
		return "", err
	}
	for k := range vals {
		switch k {
		case contract.QueueSecretPassword, contract.QueueSecretToken, contract.QueueSecretJWT, contract.QueueSecretSeed:
		default:
			return "", fmt.Errorf("secret %s: unknown key %q: want %s, %s, or %s with %s", ref, k,
				contract.QueueSecretPassword, contract.QueueSecretToken, contract.QueueSecretJWT, contract.QueueSecretSeed)
		}
	}
	// A user JWT is useless without the seed that signs the server's nonce, and a seed
	// without its JWT names no user: they come together.
	j, hasJWT := vals[contract.QueueSecretJWT]
	seed, hasSeed := vals[contract.QueueSecretSeed]
	if hasJWT != hasSeed || (hasJWT && (j == "" || seed == "")) {
		return "", fmt.Errorf("secret %s: %s and %s come together", ref, contract.QueueSecretJWT, contract.QueueSecretSeed)
	}
	c.Queue.JWT, c.Queue.Seed = j, seed
	if pw, ok := vals[contract.QueueSecretPassword]; ok {
		if c.Queue.User == "" {
			return "", fmt.Errorf("secret %s: a password but cluster %s has no user", ref, c.Name)
		}
		c.Queue.Password = pw
	}
	if tok, ok := vals[contract.QueueSecretToken]; ok {
		c.Queue.Token = tok
	}
	return "", nil
}
