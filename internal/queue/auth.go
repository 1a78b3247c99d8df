package queue

import (
	"cmp"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/weftmesh/weft/contract"
)

// jsAPI is JetStream's API subject prefix (the default; Weft sets no domain).
const jsAPI = "$JS.API."

// Permissions turns a grant into the subjects id may publish and subscribe to. Everything
// not listed is refused by the server with a permissions violation:
//
//   - publish calls: weft.calls.*.* (a function's subject, never a revision's) but the
//     denied functions' subjects;
//   - consume (a function's pods only): read the function's own durable consumer's info,
//     pull from it (CONSUMER.MSG.NEXT), ack, nak and "in progress" its messages
//     ($JS.ACK.<stream>.<consumer>.>) and publish its dead letters to weft.dead.<ns>.<name>.
//     The manager makes the consumer (EnsureConsumers): with create permission, the pods
//     could turn it into a push consumer delivering the calls to any subject, which the
//     server does not check against their permissions;
//   - a revision's pods also: dispatch their function's calls to its revisions
//     (weft.calls.<ns>.<name>.*), and find, pull and ack their own revision's consumer;
//   - subscribe: the identity's own inbox only, where JetStream's answers and pulled calls
//     arrive.
//
// Nothing grants the stream API ($JS.API.STREAM.*: delete, purge, read messages), another
// function's consumer, consumer creation or deletion, the dead-letter stream's messages, or another
// identity's inbox.
func Permissions(id Identity, g Grant) *server.Permissions {
	// Two tokens exactly: a revision's subject (four) is not a caller's to publish to, or a
	// caller could skip the split and the deny list below, which names functions' subjects.
	pub := []string{contract.CallsPrefix + "*.*"}
	var deny []string
	for _, fn := range g.CallAllBut {
		deny = append(deny, contract.CallsSubject(fn.Namespace, fn.Name))
	}
	if fn := g.Consume; fn != nil {
		durable := contract.ConsumerName(fn.Namespace, fn.Name)
		consumer := contract.CallsStream + "." + durable
		pub = append(pub,
			contract.DeadSubject(fn.Namespace, fn.Name),
			jsAPI+"CONSUMER.INFO."+consumer,
			jsAPI+"CONSUMER.MSG.NEXT."+consumer,
			"$JS.ACK."+consumer+".>",
		)
		if g.Revision != "" {
			rc := contract.CallsStream + "." + contract.RevisionConsumerName(fn.Namespace, fn.Name, g.Revision)
			pub = append(pub,
				contract.CallsSubject(fn.Namespace, fn.Name)+".*",
				jsAPI+"CONSUMER.INFO."+rc,
				jsAPI+"CONSUMER.MSG.NEXT."+rc,
				"$JS.ACK."+rc+".>",
			)
		}
	}
	p := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub, Deny: deny},
		Subscribe: &server.SubjectPermission{Allow: []string{id.InboxPrefix() + ".>"}},
	}
	return p
}

// authenticator is the embedded server's client authentication: a user name is an
// identity (or AdminUser), its password the one Credentials derive for it, and its
// permissions those Grants give it under the current policy, decided when it connects.
// NATS cannot change a connection's permissions, so when the policy changes, refresh
// disconnects the clients whose grant changed; they reconnect at once and get the new one.
type authenticator struct {
	creds  Credentials
	policy CallPolicy

	mu sync.Mutex
	// granted is each identity connection's grant, by client ID. Closed connections are
	// pruned by refresh, so it holds about as many entries as the server has clients.
	granted map[uint64]granted
}

type granted struct {
	id    Identity
	grant string // grantKey of what it was given
}

func grantKey(g Grant) string {
	c := FunctionKey{}
	if g.Consume != nil {
		c = *g.Consume
	}
	return fmt.Sprint(g.CallAllBut, c, g.Revision)
}

// Check accepts a client whose password is its user's and registers its permissions.
// Anything else (no user, a token, a wrong password, a user that is no identity) is refused.
func (a *authenticator) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	o := c.GetOpts()
	if o == nil || !a.creds.valid(o.Username, o.Password) {
		return false
	}
	if o.Username == AdminUser {
		c.RegisterUser(&server.User{Username: AdminUser})
		return true
	}
	id, ok := ParseUser(o.Username)
	if !ok {
		return false
	}
	var restricted map[FunctionKey][]string
	if a.policy != nil {
		var err error
		if restricted, err = a.policy.Restricted(); err != nil {
			return false
		}
	}
	g := Grants(id, restricted)
	c.RegisterUser(&server.User{Username: o.Username, Permissions: Permissions(id, g)})
	a.mu.Lock()
	if a.granted == nil {
		a.granted = map[uint64]granted{}
	}
	a.granted[c.GetID()] = granted{id: id, grant: grantKey(g)}
	a.mu.Unlock()
	return true
}

// refresh disconnects the connections whose grant the current policy changes, and forgets
// closed connections. A policy that cannot be read changes nothing.
func (a *authenticator) refresh(ns *server.Server) (kicked int) {
	if a.policy == nil {
		return 0
	}
	restricted, err := a.policy.Restricted()
	if err != nil {
		return 0
	}
	a.mu.Lock()
	var stale []uint64
	now := map[Identity]string{} // many connections share an identity
	for cid, g := range a.granted {
		k, ok := now[g.id]
		if !ok {
			k = grantKey(Grants(g.id, restricted))
			now[g.id] = k
		}
		if k != g.grant {
			stale = append(stale, cid)
			delete(a.granted, cid)
		}
	}
	prune := len(a.granted) > 2*ns.NumClients()+64
	a.mu.Unlock()
	for _, cid := range stale {
		if ns.DisconnectClientByID(cid) == nil {
			kicked++
		}
	}
	if prune {
		cz, err := ns.Connz(&server.ConnzOptions{Limit: 1 << 30})
		if err != nil {
			return kicked
		}
		open := make(map[uint64]bool, len(cz.Conns))
		for _, c := range cz.Conns {
			open[c.Cid] = true
		}
		a.mu.Lock()
		for cid := range a.granted {
			if !open[cid] {
				delete(a.granted, cid)
			}
		}
		a.mu.Unlock()
	}
	return kicked
}

func sortKeys(ks []FunctionKey) {
	slices.SortFunc(ks, func(a, b FunctionKey) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}
