// Package xds serves the snapshots internal/snapshot builds to Weft sidecars over gRPC: the
// Aggregated Discovery Service in both state-of-the-world and delta variants, on one port
// that other services (the autoscaler's signal intake) can share.
//
// It holds a go-control-plane snapshot cache keyed by node view (sidecars with the same
// namespace, labels, function and app port share one snapshot), sets a view's snapshot when
// its first sidecar connects, records per sidecar the last ACKed and NACKed version of each
// type, and never answers a NACK by re-sending the version that was just rejected.
package xds
