package xds_test

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// A MeshPolicy on the pool admits ServiceAccount cache only. Two pods the pool's selector
// picks, one running as cache and one as other (with a valid token of its own), get
// different views from their verified ServiceAccount: cache's sidecar gets both passwords,
// other's the refusing listener naming its real identity and not one byte of either
// password, also when its node metadata claims ServiceAccount cache.
func TestAuthRedisPolicyByVerifiedServiceAccount(t *testing.T) {
	c, cs := apiServer(t)
	in := meshInput(t)
	var mp meshv1alpha1.MeshPolicy
	must(t, yaml.Unmarshal([]byte(`
metadata: {name: pool-users, namespace: zt, generation: 1}
spec:
  targetRefs: [{group: mesh.weft.dev, kind: RedisProxy, name: pool}]
  rules:
  - from: [{principals: [zt/cache]}]
`), &mp))
	in.MeshPolicies = append(in.MeshPolicies, mp)
	s := startSecure(t, c, in)
	conn := s.dial(t)
	cachePod := meshedPod(t, c, "cache-p", "cache", map[string]string{"app": "cache"}, 0)
	otherPod := meshedPod(t, c, "other-p", "other", map[string]string{"app": "cache"}, 0)

	got, err := fetch(t, conn, podToken(t, cs, cachePod, contract.TokenAudience), &corev3.Node{Id: "cache-p." + ztNS})
	must(t, err)
	if !holds(got, redisServerPW) || !holds(got, redisClientPW) {
		t.Fatal("the admitted ServiceAccount did not get the pool's passwords")
	}
	if holds(got, contract.NetworkRBACFilterName) {
		t.Error("the admitted view's pool listener carries an RBAC filter")
	}

	otherTok := podToken(t, cs, otherPod, contract.TokenAudience)
	for _, node := range []*corev3.Node{
		{Id: "other-p." + ztNS},
		claimedNode(t, "other-p."+ztNS, map[string]any{"namespace": ztNS, "serviceAccount": "cache", "labels": map[string]any{"app": "cache"}}),
	} {
		got, err := fetch(t, conn, otherTok, node)
		must(t, err)
		if holds(got, redisServerPW) || holds(got, redisClientPW) || holds(got, "10.0.0.10") {
			t.Fatalf("refused ServiceAccount other (node metadata %v) got a password or the server", node.GetMetadata())
		}
		for _, sec := range got[resourcev3.SecretType] {
			if strings.Contains(string(sec), "redis/") { // the queue credential every view of zt gets is not the pool's
				t.Errorf("refused view holds a pool secret: %q", sec)
			}
		}
		var pool string
		for _, l := range got[resourcev3.ListenerType] {
			if strings.Contains(string(l), contract.RedisName(ztNS, "pool")) {
				pool = string(l)
			}
		}
		if !strings.Contains(pool, contract.NetworkRBACFilterName) || !strings.Contains(pool, "spiffe://cluster.local/ns/zt/sa/other") || !strings.Contains(pool, "zt/pool-users/none") {
			t.Errorf("the refused view's pool listener does not refuse naming the policy and the real identity: %q", pool)
		}
	}
}
