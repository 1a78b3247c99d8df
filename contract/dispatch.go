package contract

import "strconv"

// Dispatching queued calls of a function with revisions (docs/revisions.md). Callers
// publish to the function's subject; a pod of the function pulls the call, draws a revision
// by the split in force then (FunctionMeta.Traffic) and republishes it to that revision's
// subject, acking the original only once JetStream has stored the copy. A call on a revision
// whose traffic went to 0 % (or that was removed) is dispatched again the same way.

// HeaderPriorAttempts carries, on a dispatched copy, the attempts the call already had on
// the revisions it was dispatched from, so moving a call does not restart its
// maxAttempts. Only a function's pods and the manager can publish to revision subjects, and
// the dispatchers drop it from calls on the function's subject, so callers cannot set it.
const HeaderPriorAttempts = "Weft-Prior-Attempts"

// DispatchMsgID is the Nats-Msg-Id of the copy of a call dispatched from stream sequence
// seq. A dispatcher that dies after publishing and before acking leaves the original to be
// delivered again; the next dispatcher publishes with the same id and JetStream drops the
// copy as a duplicate (within the stream's duplicates window), so the call is queued once.
func DispatchMsgID(callID string, seq uint64) string {
	return callID + "@" + strconv.FormatUint(seq, 10)
}

// TrafficTotal is the sum of the split's percents.
func TrafficTotal(t []RevisionTraffic) uint32 {
	var sum uint32
	for _, r := range t {
		if r.Percent > 0 {
			sum += uint32(r.Percent)
		}
	}
	return sum
}

// PickRevision draws a revision of split t with n uniform in [0, TrafficTotal(t)): each
// revision with probability percent/total. "" when no revision has traffic.
func PickRevision(t []RevisionTraffic, n uint32) string {
	for _, r := range t {
		if r.Percent <= 0 {
			continue
		}
		if n < uint32(r.Percent) {
			return r.Revision
		}
		n -= uint32(r.Percent)
	}
	return ""
}

// TrafficPercent is revision rev's percent in t (0 if absent).
func TrafficPercent(t []RevisionTraffic, rev string) int32 {
	var p int32
	for _, r := range t {
		if r.Revision == rev && r.Percent > 0 {
			p += r.Percent
		}
	}
	return p
}
