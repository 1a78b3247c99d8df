// Package snapshot turns Weft's custom resources (MeshRoutes, MeshFunctions, RedisProxies)
// and the Kubernetes objects they name (Services, EndpointSlices, Pod metadata, Secrets)
// into standard Envoy v3 xDS resources, exactly as docs/xds-contract.md describes, plus one
// set of Accepted/ResolvedRefs conditions per object.
//
// Translate is a pure function: no client, clock or logger. Its Result holds the resources
// every sidecar shares; Result.Snapshot assembles the snapshot of one node view (namespace,
// pod labels, function, app port) and versions each resource type by a hash of its content,
// so identical input gives identical versions and the cache pushes nothing.
package snapshot
