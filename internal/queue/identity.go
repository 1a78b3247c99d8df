package queue

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/weftmesh/weft/contract"
)

// Who connects to NATS, and what each may do.
//
// An identity is a function's pods (they pull its calls) or the other sidecars of one
// namespace (they only call functions). Both are what the control plane can tell apart: a
// sidecar's view is its verified pod's namespace and weft.dev/function label, and whoever
// may create pods in a namespace may set that label, so no finer identity inside a
// namespace would be enforced by more than that label anyway. Separating a function's pods
// from the namespace's callers still keeps a caller (which cannot relabel its own pod)
// away from the work queues.

// Kind says what an Identity stands for.
type Kind string

const (
	// KindFunction is the pods of one MeshFunction: they call functions and consume their
	// own function's calls.
	KindFunction Kind = "fn"
	// KindNamespace is every other sidecar of one namespace: it calls functions only.
	KindNamespace Kind = "ns"
	// KindRevision is the pods of one revision of a MeshFunction with spec.traffic: they
	// call functions, dispatch their function's queued calls to its revisions by the
	// traffic split, and run the calls dispatched to their own revision.
	KindRevision Kind = "rev"
)

// AdminUser is the manager's own NATS user: it creates the streams, reads backlogs and
// redrives dead letters, so it has no permission limits. No sidecar view maps to it.
const AdminUser = "weft-manager"

// Identity is one NATS user. Name is the function's for KindFunction and KindRevision and
// empty for KindNamespace; Revision is set for KindRevision only.
type Identity struct {
	Kind      Kind
	Namespace string
	Name      string
	Revision  string
}

// FunctionIdentity is the identity of the pods of function namespace/name.
func FunctionIdentity(namespace, name string) Identity {
	return Identity{Kind: KindFunction, Namespace: namespace, Name: name}
}

// RevisionIdentity is the identity of the pods of revision rev of function namespace/name.
func RevisionIdentity(namespace, name, rev string) Identity {
	return Identity{Kind: KindRevision, Namespace: namespace, Name: name, Revision: rev}
}

// NamespaceIdentity is the identity of the sidecars of namespace that serve no function.
func NamespaceIdentity(namespace string) Identity {
	return Identity{Kind: KindNamespace, Namespace: namespace}
}

// User is the NATS user name: <kind>.<namespace>[.<name>[.<revision>]]. Kubernetes names
// hold no dots, so it parses back unambiguously (ParseUser), and each part is one subject
// token.
func (id Identity) User() string {
	if id.Revision != "" {
		return string(id.Kind) + "." + id.Namespace + "." + id.Name + "." + id.Revision
	}
	if id.Name == "" {
		return string(id.Kind) + "." + id.Namespace
	}
	return string(id.Kind) + "." + id.Namespace + "." + id.Name
}

// String is the identity as users write it in weft.dev/async-callers: "<namespace>" for
// a namespace, "<namespace>/<name>" for a function's pods (of any revision).
func (id Identity) String() string {
	if id.Name == "" {
		return id.Namespace
	}
	return id.Namespace + "/" + id.Name
}

// InboxPrefix is the identity's reply-subject prefix. Its connections must use it (nats.go
// CustomInboxPrefix) because they may subscribe to nothing else, so replies to one identity
// (JetStream acks, pulled calls) cannot be read by another.
func (id Identity) InboxPrefix() string { return "_INBOX." + id.User() }

// ParseUser reads a user name made by User; false for anything else (AdminUser included).
func ParseUser(user string) (Identity, bool) {
	parts := strings.Split(user, ".")
	valid := func(s string) bool { return s != "" && !strings.ContainsAny(s, "*> \t\r\n") }
	switch {
	case len(parts) == 2 && Kind(parts[0]) == KindNamespace && valid(parts[1]):
		return NamespaceIdentity(parts[1]), true
	case len(parts) == 3 && Kind(parts[0]) == KindFunction && valid(parts[1]) && valid(parts[2]):
		return FunctionIdentity(parts[1], parts[2]), true
	case len(parts) == 4 && Kind(parts[0]) == KindRevision && valid(parts[1]) && valid(parts[2]) && valid(parts[3]):
		return RevisionIdentity(parts[1], parts[2], parts[3]), true
	}
	return Identity{}, false
}

// CallPolicy says which identities may call a function asynchronously. A function it does
// not restrict may be called by every identity (Istio's default: allow all).
type CallPolicy interface {
	// Restricted returns each function that admits only some callers, with the callers it
	// admits (Identity.String forms: "<namespace>" or "<namespace>/<function>"). An error
	// (the policy cannot be read yet) refuses the connection: the client retries.
	Restricted() (map[FunctionKey][]string, error)
}

// CallPolicyFunc adapts a function to CallPolicy.
type CallPolicyFunc func() (map[FunctionKey][]string, error)

// Restricted calls f.
func (f CallPolicyFunc) Restricted() (map[FunctionKey][]string, error) { return f() }

// Grant is what one identity may do with the queue.
type Grant struct {
	// CallAllBut: the identity may publish calls to every function's subject except these
	// (functions that restrict their callers and do not admit it).
	CallAllBut []FunctionKey
	// Consume is the function whose calls it pulls, acks and dead-letters; nil for none.
	Consume *FunctionKey
	// Revision, with Consume, is the revision of it whose dispatched calls it also pulls;
	// such an identity dispatches the function's calls to any of its revisions.
	Revision string
}

// Grants decides what id may do: publish calls to every function whose policy admits it,
// and, for a function's pods, consume that function's calls. This is the one place that
// decides; an identity kind added later (a gateway) is granted here. restricted is
// CallPolicy.Restricted's answer (nil: no function restricts its callers).
func Grants(id Identity, restricted map[FunctionKey][]string) Grant {
	var g Grant
	switch id.Kind {
	case KindFunction:
		g.Consume = &FunctionKey{id.Namespace, id.Name}
	case KindRevision:
		g.Consume, g.Revision = &FunctionKey{id.Namespace, id.Name}, id.Revision
	}
	for fn, callers := range restricted {
		// A function's own pods may always queue calls to it (a retry of its own work).
		if admits(callers, id) || (g.Consume != nil && *g.Consume == fn) {
			continue
		}
		g.CallAllBut = append(g.CallAllBut, fn)
	}
	sortKeys(g.CallAllBut)
	return g
}

// admits reports whether callers names id: its namespace (every identity of it) or
// "<namespace>/<name>" exactly.
func admits(callers []string, id Identity) bool {
	for _, c := range callers {
		if c == id.Namespace || (id.Name != "" && c == id.Namespace+"/"+id.Name) {
			return true
		}
	}
	return false
}

// Credentials derive every identity's password from one secret key, so the manager keeps
// no per-identity state: a restarted manager (or the NATS server it embeds) checks the
// same passwords, and a sidecar's restarted pod receives the same one. Rotating the key
// (deleting the Secret) changes every password; sidecars get the new ones over xDS and
// reconnect, and queued calls stay in the stream.
type Credentials struct{ key []byte }

// NewCredentials returns credentials derived from key (the Secret's token, 32 random bytes).
func NewCredentials(key string) Credentials { return Credentials{key: []byte(key)} }

// Password is user's password: hex HMAC-SHA256(key, "weft-nats-user\x00"+user). Knowing
// one identity's password tells nothing about another's or the key.
func (c Credentials) Password(user string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte("weft-nats-user\x00" + user))
	return hex.EncodeToString(m.Sum(nil))
}

// For returns what a sidecar of id is sent: its URL-less queue credential.
func (c Credentials) For(id Identity) contract.QueueMeta {
	return contract.QueueMeta{User: id.User(), Password: c.Password(id.User()), InboxPrefix: id.InboxPrefix()}
}

// ForRevision is the credential of the sidecars of revision rev of function
// namespace/name, or ForView's when rev is "": snapshot.Queue's RevisionCredential for the
// embedded server.
func (c Credentials) ForRevision(namespace, function, rev string) contract.QueueMeta {
	if function != "" && rev != "" {
		return c.For(RevisionIdentity(namespace, function, rev))
	}
	return c.ForView(namespace, function)
}

// ForView is the credential of the sidecars of namespace serving function (or, for "",
// the namespace's other sidecars): snapshot.QueueCredentialFunc for the embedded server.
func (c Credentials) ForView(namespace, function string) contract.QueueMeta {
	if function != "" {
		return c.For(FunctionIdentity(namespace, function))
	}
	return c.For(NamespaceIdentity(namespace))
}

// Admin returns the manager's client options for the embedded server (URL left to fill).
func (c Credentials) Admin() ClientOptions {
	return ClientOptions{User: AdminUser, Password: c.Password(AdminUser)}
}

// Client returns client options that act as id (URL left to fill).
func (c Credentials) Client(id Identity) ClientOptions {
	return ClientOptions{User: id.User(), Password: c.Password(id.User()), InboxPrefix: id.InboxPrefix()}
}

// valid reports whether password is user's, in constant time.
func (c Credentials) valid(user, password string) bool {
	return len(c.key) > 0 && hmac.Equal([]byte(c.Password(user)), []byte(password))
}
