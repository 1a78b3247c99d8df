package main

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
)

func testIssuer(t *testing.T) *queue.Issuer {
	t.Helper()
	acc, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := acc.PublicKey()
	seed, _ := acc.Seed()
	iss, err := queue.NewIssuer(queue.IssuerOptions{Account: pub, SigningSeed: seed})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// With the account's signing key configured no sidecar view carries a token: every
// identity (a namespace's callers, a function's pods, a revision's pods) gets its own
// JWT and seed, and the manager signs its own user unless --nats-creds names one. A token
// set alongside (say $NATS_TOKEN left in the Deployment) is refused at start, not sent.
func TestExternalQueueWithSigningKeySendsNoToken(t *testing.T) {
	iss := testIssuer(t)
	o := bindQueueFlags(flag.NewFlagSet("test", flag.ContinueOnError))
	o.url, o.token = "nats://10.0.0.9:4222", ""
	q, client, err := externalQueue(o, iss)
	if err != nil {
		t.Fatal(err)
	}
	if client.Token != "" || client.UserJWT == nil || client.URL != o.url {
		t.Fatalf("manager client: token %q, self-signed %v, url %q", client.Token, client.UserJWT != nil, client.URL)
	}
	users := map[string]bool{}
	for _, m := range []contract.QueueMeta{q.Credential("web", ""), q.Credential("shop", "resize"), q.RevisionCredential("shop", "resize", "v2"), q.RevisionCredential("shop", "", "")} {
		if m.Token != "" || m.Password != "" {
			t.Errorf("%s: token %q password %q, want neither", m.User, m.Token, m.Password)
		}
		uc, err := jwt.DecodeUserClaims(m.JWT)
		if err != nil || m.Seed == "" || uc.Name != m.User {
			t.Errorf("%s: JWT %v (name %q), seed present %v", m.User, err, uc.Name, m.Seed != "")
		}
		users[m.User] = true
	}
	for _, u := range []string{"ns.web", "fn.shop.resize", "rev.shop.resize.v2", "ns.shop"} {
		if !users[u] {
			t.Errorf("no credential for %s (got %v)", u, users)
		}
	}

	o.creds = "/etc/weft/nats/manager.creds"
	if _, client, err = externalQueue(o, iss); err != nil || client.CredsFile != o.creds || client.UserJWT != nil {
		t.Fatalf("with --nats-creds the manager uses the file: %+v, %v", client, err)
	}

	o.token = "shared"
	if _, _, err := externalQueue(o, iss); err == nil || !strings.Contains(err.Error(), "--nats-token") || strings.Contains(err.Error(), "shared") {
		t.Fatalf("token with a signing key: err = %v, want a refusal naming the flag and not the token", err)
	}
}

// Without a signing key the legacy shared token is what every identity gets.
func TestExternalQueueLegacyToken(t *testing.T) {
	o := &queueOptions{url: "nats://10.0.0.9:4222", token: "shared", jwtLifetime: time.Hour}
	q, client, err := externalQueue(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := q.Credential("shop", "resize"); m.Token != "shared" || m.JWT != "" {
		t.Fatalf("legacy credential %+v", m)
	}
	if client.Token != "shared" {
		t.Fatalf("legacy manager client %+v", client)
	}
}
