package queue

import (
	"cmp"
	"slices"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/weftmesh/weft/contract"
)

// jsAPI is JetStream's API subject prefix (the default; Weft sets no domain).
const jsAPI = "$JS.API."

// Permissions turns a grant into the subjects id may publish and subscribe to. Everything
// not listed is refused by the server with a permissions violation:
//
//   - publish calls: weft.calls.> but the denied functions' subjects;
//   - consume (a function's pods only): create or update the function's own durable
//     consumer with its own filter subject (the filter is part of the API subject, and the
//     server refuses a body whose filter differs), read that consumer's info, pull from it
//     (CONSUMER.MSG.NEXT), ack, nak and "in progress" its messages ($JS.ACK.<stream>.<consumer>.>)
//     and publish its dead letters to weft.dead.<ns>.<name>;
//   - subscribe: the identity's own inbox only, where JetStream's answers and pulled calls
//     arrive.
//
// Nothing grants the stream API ($JS.API.STREAM.*: delete, purge, read messages), another
// function's consumer, consumer deletion, the dead-letter stream's messages, or another
// identity's inbox.
func Permissions(id Identity, g Grant) *server.Permissions {
	pub := []string{contract.CallsPrefix + ">"}
	var deny []string
	for _, fn := range g.CallAllBut {
		deny = append(deny, contract.CallsSubject(fn.Namespace, fn.Name))
	}
	if fn := g.Consume; fn != nil {
		durable := contract.ConsumerName(fn.Namespace, fn.Name)
		consumer := contract.CallsStream + "." + durable
		pub = append(pub,
			contract.DeadSubject(fn.Namespace, fn.Name),
			jsAPI+"CONSUMER.CREATE."+consumer+"."+contract.CallsSubject(fn.Namespace, fn.Name),
			jsAPI+"CONSUMER.INFO."+consumer,
			jsAPI+"CONSUMER.MSG.NEXT."+consumer,
			"$JS.ACK."+consumer+".>",
		)
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
type authenticator struct {
	creds  Credentials
	policy CallPolicy
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
	c.RegisterUser(&server.User{Username: o.Username, Permissions: Permissions(id, Grants(id, restricted))})
	return true
}

func sortKeys(ks []FunctionKey) {
	slices.SortFunc(ks, func(a, b FunctionKey) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}
