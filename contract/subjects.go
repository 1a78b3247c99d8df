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
