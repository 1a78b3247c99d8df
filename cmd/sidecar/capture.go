package main

import (
	"io"
	"net"

	"github.com/weftmesh/weft/sidecar/capture"
	"github.com/weftmesh/weft/sidecar/httpproxy"
)

// httpRef lets the capture plane and the HTTP plane refer to each other: the HTTP
// listeners offer accepted connections to the capture plane (Diverter), which hands HTTP
// chains' connections back (ServeCaptured).
type httpRef struct{ p *httpproxy.Proxy }

func (r *httpRef) ServeCaptured(listener string, nc net.Conn, in []byte) bool {
	return r.p.ServeCaptured(listener, nc, in)
}

// captureStats is the capture plane's and the HTTP passthrough's /stats.
type captureStats struct {
	c *capture.Capture
	p *httpproxy.Proxy
}

func (s captureStats) WritePrometheus(w io.Writer) {
	s.c.WritePrometheus(w)
	s.p.WriteCaptureStats(w)
}
