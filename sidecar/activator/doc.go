// Package activator holds requests in the caller's sidecar while a function
// scales up from zero, and carries the sidecar → manager scaling signals.
//
// The outbound HTTP proxy asks an Activator to Hold each request for a
// function cluster. With ready endpoints and concurrency room Hold returns at
// once; with none it queues the request in a bounded FIFO, tells the
// autoscaler how many requests it holds (at once for the first, within
// BurstInterval when the count grows, each second while requests wait, and 0
// once none is held), and releases the queue in arrival order when EDS
// reports endpoints, never beyond containerConcurrency × ready requests in
// flight. A full queue
// or a hold timeout returns an error that names the function and suggests a
// Retry-After. Reporter sends stats and demand to the manager over gRPC with
// a JSON codec, so no generated code is needed on either side.
package activator
