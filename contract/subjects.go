package contract

import "strings"

// JetStream streams and subject prefixes of asynchronous calls. internal/queue creates the
// streams; sidecar/async publishes to and consumes from them.
const (
	// CallsStream is the work queue of calls, one subject per function.
	CallsStream = "WEFT_CALLS"
	// DeadStream keeps calls that ran out of attempts or age.
	DeadStream = "WEFT_DEAD"
	// CallsPrefix starts every calls subject: weft.calls.<namespace>.<name>.
	CallsPrefix = "weft.calls."
	// DeadPrefix starts every dead-letter subject: weft.dead.<namespace>.<name>.
	DeadPrefix = "weft.dead."
)

// CallsSubject is where calls to the function namespace/name are published.
func CallsSubject(namespace, name string) string { return CallsPrefix + namespace + "." + name }

// DeadSubject is where the function's calls that ran out of attempts or age go.
func DeadSubject(namespace, name string) string { return DeadPrefix + namespace + "." + name }

// ConsumerName is the durable JetStream consumer on CallsStream that all of a function's
// sidecars share. Kubernetes names never contain "_", so the name is unambiguous; the
// queue's permissions let only the function's own identity use it.
func ConsumerName(namespace, name string) string { return "weft_" + namespace + "_" + name }

// FunctionFromSubject parses a calls subject back into namespace and name. Kubernetes
// names cannot contain dots, so the split is unambiguous.
func FunctionFromSubject(subject string) (namespace, name string, ok bool) {
	rest, found := strings.CutPrefix(subject, CallsPrefix)
	if !found {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ".")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ".") {
		return "", "", false
	}
	return namespace, name, true
}

// RevisionCallsSubject is where a call waits once it has been dispatched to one revision of
// a function with revisions: weft.calls.<namespace>.<name>.<revision>. Callers publish to
// the function's subject only; a function's pods (dispatching by the traffic split) and the
// manager (moving calls off a revision that lost its traffic) publish here.
func RevisionCallsSubject(namespace, name, revision string) string {
	return CallsSubject(namespace, name) + "." + revision
}

// RevisionConsumerName is the durable consumer of one revision's calls, which that
// revision's pods share: weft_<namespace>_<name>_<revision>. Kubernetes names hold no "_",
// so it is told apart from a function's consumer by its number of parts.
func RevisionConsumerName(namespace, name, revision string) string {
	return ConsumerName(namespace, name) + "_" + revision
}

// ParseCallsSubject reads a calls subject: a function's (revision "") or one revision's.
func ParseCallsSubject(subject string) (namespace, name, revision string, ok bool) {
	rest, found := strings.CutPrefix(subject, CallsPrefix)
	if !found {
		return "", "", "", false
	}
	parts := strings.Split(rest, ".")
	for _, p := range parts {
		if p == "" {
			return "", "", "", false
		}
	}
	switch len(parts) {
	case 2:
		return parts[0], parts[1], "", true
	case 3:
		return parts[0], parts[1], parts[2], true
	}
	return "", "", "", false
}
