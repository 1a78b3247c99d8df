package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// RedisProxySpec describes a Redis pool that the selected workloads' sidecars serve on a local
// port, sharding keys over the pool's servers the way twemproxy does.
//
// +kubebuilder:validation:XValidation:rule="has(self.servers) != has(self.serviceRef)",message="set exactly one of servers or serviceRef"
// +kubebuilder:validation:XValidation:rule="!has(self.servers) || self.servers.all(s, self.servers.exists_one(o, o.name == s.name))",message="server names must be unique: they are the ketama ring names"
type RedisProxySpec struct {
	// WorkloadSelector picks the pods (in this namespace) whose sidecars serve this pool.
	// Empty selects every meshed pod in the namespace.
	// +optional
	WorkloadSelector *WorkloadSelector `json:"workloadSelector,omitempty"`

	// Listener is where the sidecar accepts Redis clients.
	// +optional
	// +kubebuilder:default={}
	Listener RedisListener `json:"listener,omitempty"`

	// Servers of the pool, in ring order. Each name is the server's place on the hash ring,
	// so an address change moves no key.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	Servers []RedisServer `json:"servers,omitempty"`

	// ServiceRef takes the servers from a Service's ready endpoints instead; each endpoint's
	// hostname (a StatefulSet pod name) is its ring name.
	// +optional
	ServiceRef *RedisServiceRef `json:"serviceRef,omitempty"`

	// Sharding says how keys map to servers.
	// +optional
	// +kubebuilder:default={}
	Sharding Sharding `json:"sharding,omitempty"`

	// PrefixRoutes send keys with a prefix to another RedisProxy's servers (Envoy's
	// prefix_routes). The longest matching prefix wins; other keys use this pool.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	PrefixRoutes []RedisPrefixRoute `json:"prefixRoutes,omitempty"`

	// Auth sets passwords clients must give the sidecar and the sidecar gives the servers.
	// +optional
	Auth *RedisAuth `json:"auth,omitempty"`

	// OpTimeout bounds each command; a slow server's reply becomes -ERR.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="opTimeout must be a duration from 0s to 1h, such as 30s or 1m30s"
	OpTimeout *Duration `json:"opTimeout,omitempty"`

	// HealthCheck pings servers actively.
	// +optional
	// +kubebuilder:default={}
	HealthCheck RedisHealthCheck `json:"healthCheck,omitempty"`

	// OutlierDetection ejects servers that keep failing.
	// +optional
	// +kubebuilder:default={}
	OutlierDetection RedisOutlierDetection `json:"outlierDetection,omitempty"`

	// Replicas of a standalone proxy Deployment (with a Service of the same name) for clients
	// outside the mesh. Unset means none.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Replicas *int32 `json:"replicas,omitempty"`
}

// WorkloadSelector selects pods by label (Istio's workloadSelector).
type WorkloadSelector struct {
	// Labels a pod must all have.
	// +optional
	// +kubebuilder:validation:MaxProperties=16
	Labels map[string]string `json:"labels,omitempty"`
}

// RedisListener is the address the sidecar serves Redis on.
type RedisListener struct {
	// Address to bind: an IPv4 or IPv6 address, such as 127.0.0.1, ::1 or 0.0.0.0. 127.0.0.1
	// keeps the pool private to the pod.
	// +optional
	// +kubebuilder:default="127.0.0.1"
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="listener.address must be an IP address, such as 127.0.0.1, 0.0.0.0 or ::1 (no host name, brackets or port)"
	Address string `json:"address,omitempty"`

	// Port to bind, 1 to 65535, other than the sidecar's own ports 15000 (admin), 15001
	// (outbound), 15006 (inbound) and 15020 (metrics).
	// +optional
	// +kubebuilder:default=6379
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:validation:XValidation:rule="!(self in [15000, 15001, 15006, 15020])",message="listener.port must not be one of the sidecar's own ports: 15000 (admin), 15001 (outbound), 15006 (inbound), 15020 (metrics); pick another, such as 6379"
	Port int32 `json:"port,omitempty"`
}

// RedisServer is one server of the pool.
type RedisServer struct {
	// Name is the server's ring name (twemproxy's server name): keep it stable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=200
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.:]*[A-Za-z0-9])?$`
	Name string `json:"name"`

	// Address is host:port of the server; an IPv6 address is written in brackets, as in
	// [fd00::1]:6379.
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=260
	// +kubebuilder:validation:Pattern=`^([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$`
	// +kubebuilder:validation:XValidation:rule="self.startsWith('[') || self.split(':').size() == 2",message="an IPv6 server address needs brackets around the IP, as in [fd00::1]:6379"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^.*:[0-9]{1,5}$') || (int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)",message="address port must be between 1 and 65535"
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('[') || isIP(self.substring(1, self.lastIndexOf(']')))",message="the address in brackets must be an IPv6 address, as in [fd00::1]:6379"
	Address string `json:"address"`

	// Weight gives the server this share of the ring relative to the others.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	Weight int32 `json:"weight,omitempty"`
}

// RedisServiceRef names a Service whose endpoints are the pool's servers.
type RedisServiceRef struct {
	// Name of the Service in this namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`

	// Port of the Service.
	// +optional
	// +kubebuilder:default=6379
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
}

// Distribution is how keys spread over servers (twemproxy's names).
// +kubebuilder:validation:Enum=ketama;modula;random
type Distribution string

// Distributions.
const (
	DistributionKetama Distribution = "ketama"
	DistributionModula Distribution = "modula"
	DistributionRandom Distribution = "random"
)

// HashFunction hashes keys (twemproxy's names).
// +kubebuilder:validation:Enum=one_at_a_time;md5;crc16;crc32;crc32a;fnv1_64;fnv1a_64;fnv1_32;fnv1a_32;hsieh;murmur;jenkins
type HashFunction string

// Sharding says how keys map to servers. The defaults are twemproxy's except the distribution.
// +kubebuilder:validation:XValidation:rule="!has(self.hashTag) || size(self.hashTag) == 0 || size(bytes(self.hashTag)) == 2",message="hashTag must be exactly two bytes, i.e. two ASCII characters such as {}: the sidecar splits keys on single bytes, so characters like « do not work; or leave it empty to hash whole keys"
type Sharding struct {
	// Distribution of keys: ketama (consistent hashing, twemproxy-exact), modula or random.
	// +optional
	// +kubebuilder:default=ketama
	Distribution Distribution `json:"distribution"`

	// Hash function applied to keys.
	// +optional
	// +kubebuilder:default=fnv1a_64
	Hash HashFunction `json:"hash"`

	// HashTag is two ASCII characters (two bytes); only the part of a key between them is
	// hashed, so related keys can share a server. "{}" matches Redis Cluster. Empty hashes
	// whole keys.
	// +optional
	// +kubebuilder:default="{}"
	HashTag string `json:"hashTag"`
}

// RedisPrefixRoute routes keys by prefix.
type RedisPrefixRoute struct {
	// Prefix of the keys routed.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Prefix string `json:"prefix"`

	// RemovePrefix strips the prefix from keys before they are sent.
	// +optional
	RemovePrefix bool `json:"removePrefix,omitempty"`

	// RedisProxy is the name of another RedisProxy in this namespace whose servers take these
	// keys.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	RedisProxy string `json:"redisProxy"`
}

// RedisAuth holds the two separate credentials: the one clients give the sidecar
// (downstream) and the one the sidecar gives the servers (upstream).
type RedisAuth struct {
	// Downstream credentials clients must send with AUTH before any other command.
	// +optional
	Downstream *RedisCredentials `json:"downstream,omitempty"`

	// Upstream credentials the sidecar sends on every new server connection.
	// +optional
	Upstream *RedisCredentials `json:"upstream,omitempty"`
}

// RedisCredentials is an optional ACL username and a password from a Secret.
type RedisCredentials struct {
	// Username for Redis 6 ACLs; unset means the default user.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Username string `json:"username,omitempty"`

	// PasswordSecretRef names the Secret key holding the password.
	PasswordSecretRef SecretKeyRef `json:"passwordSecretRef"`
}

// RedisHealthCheck pings servers.
type RedisHealthCheck struct {
	// Interval between PINGs to each server.
	// +optional
	// +kubebuilder:default="3s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="healthCheck.interval must be a duration from 0s to 1h, such as 30s or 1m30s"
	Interval *Duration `json:"interval,omitempty"`

	// Timeout of one PING.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="healthCheck.timeout must be a duration from 0s to 1h, such as 30s or 1m30s"
	Timeout *Duration `json:"timeout,omitempty"`

	// HealthyThreshold is how many good PINGs bring a down server back.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	HealthyThreshold int32 `json:"healthyThreshold,omitempty"`

	// UnhealthyThreshold is how many failed PINGs take a server down.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	UnhealthyThreshold int32 `json:"unhealthyThreshold,omitempty"`
}

// EjectMode is what happens to a down server's keys.
// +kubebuilder:validation:Enum=remap;fail
type EjectMode string

// Eject modes.
const (
	// EjectRemap rebuilds the ring from live servers, so the down server's keys move
	// (twemproxy's auto_eject_hosts: true). Good for caches.
	EjectRemap EjectMode = "remap"
	// EjectFail keeps the ring and answers -ERR for the down server's keys, so no key moves.
	// Good for stores.
	EjectFail EjectMode = "fail"
)

// RedisOutlierDetection ejects servers after consecutive failures (connection errors,
// timeouts).
type RedisOutlierDetection struct {
	// ConsecutiveFailures before a server is ejected (twemproxy's server_failure_limit).
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// EjectionTime before an ejected server is probed again (twemproxy's
	// server_retry_timeout). It returns only after a successful probe.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('24h')",message="outlierDetection.ejectionTime must be a duration from 0s to 24h, such as 30s or 1m30s"
	EjectionTime *Duration `json:"ejectionTime,omitempty"`

	// Mode for a down server's keys: fail (default; no key moves) or remap.
	// +optional
	// +kubebuilder:default=fail
	Mode EjectMode `json:"mode,omitempty"`
}

// RedisProxyStatus reports the pool's servers and readiness.
type RedisProxyStatus struct {
	MeshStatus `json:",inline"`

	// Servers is how many servers the pool has now.
	// +optional
	Servers int32 `json:"servers,omitempty"`

	// ReadyServers is how many of them have a ready endpoint.
	// +optional
	ReadyServers int32 `json:"readyServers,omitempty"`
}

// RedisProxy is a Redis pool sharded by the selected workloads' own sidecars.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rp,categories=weft
// +kubebuilder:printcolumn:name="Servers",type=integer,JSONPath=`.status.servers`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,description="Why the object is or is not ready"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RedisProxy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec RedisProxySpec `json:"spec"`
	// Status is defaulted to {observedGeneration: 0} so an object Weft has not reconciled
	// yet reads InProgress to kstatus (which skips its generation check when
	// observedGeneration is absent and would call the object Current).
	// +kubebuilder:default={observedGeneration: 0}
	Status RedisProxyStatus `json:"status,omitempty"`
}

// RedisProxyList is a list of RedisProxies.
//
// +kubebuilder:object:root=true
type RedisProxyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RedisProxy `json:"items"`
}
