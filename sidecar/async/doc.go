// Package async turns HTTP calls into queued function calls and runs them, with no gateway
// in between.
//
// On the caller's side, a Publisher takes a request the outbound proxy marked asynchronous
// (a "Prefer: respond-async" header, or a function whose metadata says async), publishes it
// to NATS JetStream on weft.calls.<namespace>.<name> and answers 202 with an X-Call-Id.
//
// On the callee's side, a Consumer in each function pod's sidecar pulls that function's
// calls with a durable consumer, at most maxInflight at a time, runs each against the local
// app, retries retryable failures with exponential back-off, moves calls that ran out of
// attempts or age to weft.dead.<namespace>.<name>, and POSTs the outcome to the caller's
// X-Callback-Url.
//
// Config is decoded from the function cluster's weft.dev/function metadata. The streams
// themselves are created by the manager (internal/queue); the subject layout is shared with
// it.
package async
