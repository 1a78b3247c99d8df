package peer_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/peer"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// A poke and stats that sidecars send to two different followers reach the leader's
// autoscaler, which decides on them; the followers' autoscalers decide nothing.
func TestSignalsOnFollowersReachTheLeadersDecider(t *testing.T) {
	leader, followers := startReplicas(t, 3, "signals")
	ctx := context.Background()
	if err := sidecar(t, followers[0]).SendDemand(ctx, fn.Namespace, fn.Name); err != nil {
		t.Fatalf("poke to follower %s: %v", followers[0].name, err)
	}
	waitDecision(t, leader, 5*time.Second, "the leader scales from zero on a follower's poke", func(d autoscale.Decision) bool { return d.Desired >= 1 })

	// Two pods at concurrency 70 (the default target): two pods, on the leader's next tick.
	start := time.Now()
	for time.Since(start) < 3*autoscale.TickInterval {
		if err := sidecar(t, followers[1]).Report(ctx, []contract.PodStat{
			{Namespace: fn.Namespace, Name: fn.Name, Pod: "fn-1", Concurrency: 70, Requests: 10},
			{Namespace: fn.Namespace, Name: fn.Name, Pod: "fn-2", Concurrency: 70, Requests: 10},
		}); err != nil {
			t.Fatalf("stats to follower %s: %v", followers[1].name, err)
		}
		select {
		case d := <-leader.decisions:
			if d.d.Desired >= 2 {
				t.Logf("leader %s: %+v", leader.name, d.d)
				for _, f := range followers {
					if len(f.decisions) != 0 {
						t.Errorf("follower %s decided: %+v", f.name, <-f.decisions)
					}
				}
				return
			}
		case <-time.After(time.Second):
		}
	}
	t.Fatalf("the leader never wanted 2 pods for 140 concurrent requests reported to a follower")
}

// The peer port refuses calls without the peer token, or with another one: a pod cannot
// skip the signal service's checks by calling the leader's peer port itself.
func TestPeerPortRefusesCallsWithoutTheToken(t *testing.T) {
	leader, _ := startReplicas(t, 1, "token")
	addr := leader.peerAddr
	sec := security(t) // another Secret's token
	// Trust anything: the attacker skips verification; the server still wants the token.
	creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the attacker's side
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.CallContentSubtype(contract.SignalCodecName)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	held := 500
	batch := &peer.Signals{Replica: "forged", Demand: []peer.Demand{{Namespace: fn.Namespace, Name: fn.Name, Caller: "x", Held: &held}}}
	for name, md := range map[string]metadata.MD{
		"no token":    nil,
		"wrong token": metadata.Pairs("x-weft-peer-token", sec.Token),
		"two tokens":  metadata.Pairs("x-weft-peer-token", sec.Token, "x-weft-peer-token", sec.Token),
	} {
		cctx := metadata.NewOutgoingContext(context.Background(), md)
		err := conn.Invoke(cctx, peer.SignalsMethod, batch, &peer.Ack{})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: %v, want Unauthenticated", name, err)
		}
	}
	select {
	case d := <-leader.decisions:
		t.Fatalf("a forged batch reached the autoscaler: %+v", d)
	case <-time.After(500 * time.Millisecond):
	}
}

// A sidecar connected to a follower holds up the leader's hand-off until it ACKs the
// snapshot that drains the function, and until the follower's own snapshot drains it too.
func TestHandoffCountsACKsOnFollowers(t *testing.T) {
	leader, followers := startReplicas(t, 3, "handoff")
	ctx := context.Background()
	all := append([]*replica{leader}, followers...)
	setAll := func(rs []*replica, ready bool) {
		t.Helper()
		for _, r := range rs {
			if err := r.cache.SetResult(ctx, snapshot.Translate(withFunction(ready))); err != nil {
				t.Fatal(err)
			}
		}
	}
	setAll(all, true)
	md, _ := structpb.NewStruct(map[string]any{"namespace": "default", "pod": "caller-1"})
	cl := xdsclient.New(xdsclient.Options{Address: followers[0].xds.Addr().String(), Node: &corev3.Node{Id: "caller-1.default", Metadata: md}})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = cl.Run(cctx) }()
	poll.Until(t, 10*time.Second, func() bool { return cl.Current() != nil }, "waiting for the caller's config")

	// The leader's status sees the follower's sidecar, synced.
	poll.Until(t, 10*time.Second, func() bool {
		for _, n := range leader.hub.Nodes() {
			if n.ID == "caller-1.default" && n.Acked[resourcev3.EndpointType] != "" && n.Acked[resourcev3.EndpointType] == n.Want[resourcev3.EndpointType] {
				return true
			}
		}
		return false
	}, "waiting for the leader to list the follower's sidecar")

	// The leader and one follower drain fn; the sidecar's follower does not yet.
	setAll([]*replica{leader, followers[1]}, false)
	poll.Until(t, 5*time.Second, func() bool { return leader.xds.Drained(fn) }, "the leader's own sidecars (none) drained")
	time.Sleep(peer.ReportInterval + time.Second) // past the new leader's grace and a heartbeat
	if leader.hub.Drained(fn) {
		t.Fatal("hand-off complete while the follower's snapshot still sends fn new requests")
	}
	setAll([]*replica{followers[0]}, false)
	poll.Until(t, 10*time.Second, func() bool { return leader.hub.Drained(fn) }, "waiting for the hand-off over every replica")
	// The ACK goes out just before the client swaps its config in.
	poll.Until(t, 10*time.Second, func() bool {
		eps := cl.Current().Clusters[contract.FunctionClusterName(fn.Namespace, fn.Name)].Endpoints
		return len(eps) == 1 && eps[0].Health == config.Draining
	}, "waiting for the caller to hold the endpoint as draining")
}

// Killing the leader (no Lease release, as a crash) gives the Lease to another replica
// within the lease duration plus the retry period, and a poke sent to a follower while no
// replica leads is decided on by the new leader.
func TestLeaderLossNewLeaderDecidesBufferedDemand(t *testing.T) {
	leader, followers := startReplicas(t, 3, "failover")
	killed := time.Now()
	leader.stop()
	held := 40
	if err := sidecar(t, followers[0]).SendHeld(context.Background(), fn.Namespace, fn.Name, held); err != nil {
		t.Fatalf("held count to follower %s during the failover: %v", followers[0].name, err)
	}
	var next *replica
	poll.Until(t, 4*leaseDuration, func() bool { next = leaderOf(followers); return next != nil }, "waiting for a new leader")
	took := time.Since(killed)
	t.Logf("new leader %s after %s (lease %s, retry %s)", next.name, took.Round(10*time.Millisecond), leaseDuration, retryPeriod)
	// Not a performance figure: a failover that waits for more than another lease means the
	// dead leader's Lease was not simply left to expire (the e2e TestHA logs the real figure).
	if limit := 2 * leaseDuration; took > limit {
		t.Errorf("new leader after %s, want about one lease duration (%s), at most %s", took, leaseDuration, limit)
	}
	d := waitDecision(t, next, 10*time.Second, "the new leader scales for the demand held during the failover", func(d autoscale.Decision) bool { return d.Desired >= 1 })
	if d.Held != held {
		t.Errorf("decision saw %d held requests, want %d", d.Held, held)
	}
}
