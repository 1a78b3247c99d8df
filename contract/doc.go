// Package contract is the one copy of the contract between the Weft control plane
// (internal/snapshot, internal/queue, internal/autoscale) and the Weft sidecar (sidecar/...),
// described in docs/xds-contract.md: resource and listener names, ports, node metadata keys,
// the weft.dev/... filter-metadata keys and their typed payloads (Encode to and Decode from
// google.protobuf.Struct), the NATS streams and subjects of asynchronous calls, and the
// sidecar → manager signal messages.
//
// Both sides import it and nothing else of each other. It imports only the standard library
// and protobuf's well-known types, so it stays a leaf: a change here is a change to the wire
// and must keep older peers working (see each type's Decode).
package contract
