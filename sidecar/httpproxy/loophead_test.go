package httpproxy

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httphead"
)

// FuzzResponseHeadForms holds the event loop's line-by-line copy of a plain response
// head (appendResponseHead) to what the parsed path (responseHeader and h1Writer)
// sends for the same head: a client reading either with net/http sees the same status,
// fields and close flag.
func FuzzResponseHeadForms(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nx-a: 1\r\nX-A: 2\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.1 204 No Content\r\nProxy-Connection: keep-alive\r\nconnection: Keep-Alive\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 299 Custom\r\nContent-Length: 0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"), false)
	f.Fuzz(func(t *testing.T, in []byte, closeAfter bool) {
		n := httphead.End(in)
		if n < 0 {
			return
		}
		head := in[:n]
		hd, plain, ok := httphead.ScanResponse(head)
		full, fullOK := httphead.ParseResponse(head)
		if ok != fullOK {
			t.Fatalf("on %q ScanResponse says %v, ParseResponse %v", head, ok, fullOK)
		}
		if !ok {
			return
		}
		if hd.Status != full.Status || hd.ContentLength != full.ContentLength || hd.Close != full.Close {
			t.Fatalf("on %q scan gives %d/%d/%v, parse %d/%d/%v", head, hd.Status, hd.ContentLength, hd.Close,
				full.Status, full.ContentLength, full.Close)
		}
		if !plain {
			return
		}
		raw := appendResponseHead(nil, head, hd.Status, closeAfter)

		var parsed bytes.Buffer
		bw := bufio.NewWriter(&parsed)
		req := &http.Request{Method: http.MethodGet, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}
		w := &h1Writer{bw: bw}
		w.reset(req, closeAfter)
		responseHeader(w.Header(), full.Header, &config.Route{}, &config.WeightedCluster{}, "")
		w.WriteHeader(full.Status)
		_ = bw.Flush()

		a, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), req)
		if err != nil {
			t.Fatalf("net/http cannot read the copied head %q: %v", raw, err)
		}
		b, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(parsed.Bytes())), req)
		if err != nil {
			t.Fatalf("net/http cannot read the parsed path's head %q: %v", parsed.Bytes(), err)
		}
		if a.StatusCode != b.StatusCode || a.Close != b.Close || a.ContentLength != b.ContentLength {
			t.Fatalf("copied %d close=%v len=%d, parsed %d close=%v len=%d\ncopied: %q\nparsed: %q",
				a.StatusCode, a.Close, a.ContentLength, b.StatusCode, b.Close, b.ContentLength, raw, parsed.Bytes())
		}
		if d := cmp.Diff(b.Header, a.Header); d != "" {
			t.Fatalf("fields differ (-parsed +copied):\n%s\ncopied: %q\nparsed: %q", d, raw, parsed.Bytes())
		}
	})
}
