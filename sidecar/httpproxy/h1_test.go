package httpproxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// echo answers with the request's protocol, method and body, streaming (no
// Content-Length) when the path is /stream.
func echo(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	if r.URL.Path == "/stream" {
		w.(http.Flusher).Flush()
	}
	_, _ = io.WriteString(w, r.Method+" "+string(b))
}

func frontEnd(t *testing.T) string {
	be := st.Backend(t, "", echo)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("5xx", 1, 0)})
	cp.Set(snap)
	return st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
}

func TestH2CPriorKnowledge(t *testing.T) {
	base := frontEnd(t)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protocols,
		DialTLSContext: func(context.Context, string, string) (net.Conn, error) { return nil, tls.RecordHeaderError{} }}}
	req, _ := http.NewRequest(http.MethodPost, base+"/", strings.NewReader("over h2c"))
	req.Host = "reviews"
	resp, err := h2c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 || string(b) != "POST over h2c" {
		t.Errorf("got %s %q, want HTTP/2 and the echoed body", resp.Proto, b)
	}
}

func TestHTTP1Framing(t *testing.T) {
	base := frontEnd(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	send := func(raw string) *http.Response {
		t.Helper()
		if _, err := io.WriteString(conn, raw); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		req, _ := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("reading response to %q: %v", raw, err)
		}
		return resp
	}
	body := func(r *http.Response) string { b, _ := io.ReadAll(r.Body); r.Body.Close(); return string(b) }

	// A chunked request body of unknown length: streamed once to the upstream.
	r := send("POST / HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	if got := body(r); r.StatusCode != 200 || got != "POST hello" {
		t.Errorf("chunked POST: %d %q, want 200 POST hello", r.StatusCode, got)
	}
	// A streamed response (no Content-Length upstream) comes back chunked on the same connection.
	r = send("GET /stream HTTP/1.1\r\nHost: reviews\r\n\r\n")
	if got := body(r); len(r.TransferEncoding) == 0 || got != "GET " {
		t.Errorf("streamed response: TE=%v body %q, want chunked GET", r.TransferEncoding, got)
	}
	// HEAD gets headers only, and the connection stays usable.
	r = send("HEAD / HTTP/1.1\r\nHost: reviews\r\n\r\n")
	if r.StatusCode != 200 {
		t.Errorf("HEAD: %d", r.StatusCode)
	}
	r.Body.Close()
	// A request without Host is refused as net/http would refuse it.
	r = send("GET / HTTP/1.1\r\n\r\n")
	if got := body(r); r.StatusCode != 400 || !strings.Contains(got, "Host") {
		t.Errorf("no Host: %d %q, want 400 naming Host", r.StatusCode, got)
	}
}
