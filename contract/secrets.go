package contract

// Secrets over SDS (docs/zero-trust.md, docs/xds-contract.md "Secrets"). A password or
// token never rides inside a listener or cluster: the resource names a Secret (type
// envoy.extensions.transport_sockets.tls.v3.Secret, a generic_secret) that only the views
// needing it receive, and the sidecar resolves the name against what it got over SDS.
const (
	// SecretRefMetadataKey is the metadata.typed_filter_metadata key under which a listener
	// or cluster names its secret: an envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig
	// whose sds_config is ADS. On a redis listener it is the password clients must AUTH with;
	// on a redis pool cluster the password the proxy sends to the servers; on the queue
	// cluster the sidecar's NATS password or token.
	SecretRefMetadataKey = "weft.dev/secret"
	// QueueSecretPassword and QueueSecretToken are the keys of the queue secret's
	// generic_secret.secrets map: the identity's NATS password (the user is in the cluster's
	// weft.dev/nats metadata) or an external cluster's token.
	QueueSecretPassword = "password"
	QueueSecretToken    = "token"
	// QueueSecretJWT and QueueSecretSeed are the keys of an identity's user JWT and its
	// user NKEY seed (SU...), for an external NATS cluster in decentralized JWT mode; they
	// come together.
	QueueSecretJWT  = "jwt"
	QueueSecretSeed = "seed"
	// MaxSecretBytes bounds one secret value the sidecar accepts (64 KiB): a password or a
	// token is a few dozen bytes; anything larger is refused (NACK).
	MaxSecretBytes = 64 << 10
)

// RedisDownstreamSecretName is the secret holding the password clients of RedisProxy
// <ns>/<name> must AUTH with: redis/<ns>/<name>/downstream.
func RedisDownstreamSecretName(ns, name string) string {
	return "redis/" + ns + "/" + name + "/downstream"
}

// RedisUpstreamSecretName is the secret holding the password RedisProxy <ns>/<name> sends to
// its servers: redis/<ns>/<name>/upstream.
func RedisUpstreamSecretName(ns, name string) string { return "redis/" + ns + "/" + name + "/upstream" }

// QueueSecretName is the queue credential of one queue identity: queue/<ns>/<function> for
// the pods of a function, queue/<ns> for the namespace's other sidecars.
func QueueSecretName(ns, function string) string {
	if function == "" {
		return "queue/" + ns
	}
	return "queue/" + ns + "/" + function
}

// QueueRevisionSecretName is the queue credential of the pods of one revision of a function:
// queue/<ns>/<function>/<revision>.
func QueueRevisionSecretName(ns, function, revision string) string {
	return QueueSecretName(ns, function) + "/" + revision
}
