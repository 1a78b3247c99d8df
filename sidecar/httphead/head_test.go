package httphead

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"plain GET", "GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n\r\n", true},
		{"repeated field", "GET / HTTP/1.1\r\nHost: svc\r\nAccept: a\r\naccept: b\r\n\r\n", true},
		{"body", "POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\n", true},
		{"sub-delims in path", "GET /a(b)!*'$;=:@ HTTP/1.1\r\nHost: svc\r\n\r\n", true},
		{"no host", "GET / HTTP/1.1\r\nAccept: a\r\n\r\n", false},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false},
		{"empty host then another", "GET / HTTP/1.1\r\nHost:\r\nHost: b\r\n\r\n", false},
		{"escaped path", "GET /a%2Fb HTTP/1.1\r\nHost: svc\r\n\r\n", false},
		{"absolute form", "GET http://svc:8080/a?b=1 HTTP/1.1\r\nHost: other\r\n\r\n", true},
		{"absolute form without host header", "GET http://svc/ HTTP/1.1\r\n\r\n", true},
		{"absolute form without path", "GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n", false},
		{"absolute form with user info", "GET http://u@svc/ HTTP/1.1\r\nHost: svc\r\n\r\n", false},
		{"https absolute form", "GET https://svc/ HTTP/1.1\r\nHost: svc\r\n\r\n", false},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: svc\r\n\r\n", false},
		{"chunked", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"two lengths", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", false},
		{"signed length", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: +1\r\n\r\n", false},
		{"space before colon", "GET / HTTP/1.1\r\nHost : svc\r\n\r\n", false},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: svc\r\nX: a\r\n b\r\n\r\n", false},
		{"bare LF", "GET / HTTP/1.1\nHost: svc\r\n\r\n", false},
		{"control in value", "GET / HTTP/1.1\r\nHost: svc\r\nX: a\x01b\r\n\r\n", false},
		{"lower-case method", "get / HTTP/1.1\r\nHost: svc\r\n\r\n", false},
		{"pragma", "GET / HTTP/1.1\r\nHost: svc\r\nPragma: no-cache\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.in)
			n := End(b)
			if n != len(b) {
				t.Fatalf("End = %d, want %d", n, len(b))
			}
			_, ok := ParseRequest(b)
			if ok != tc.ok {
				t.Fatalf("ParseRequest ok = %v, want %v", ok, tc.ok)
			}
			if ok {
				sameAsNetHTTP(t, b)
			}
		})
	}
}

// sameAsNetHTTP checks that a head the fast path accepts means to the proxy exactly what
// net/http's parser makes of it.
func sameAsNetHTTP(t *testing.T, b []byte) {
	t.Helper()
	h, ok := ParseRequest(b)
	if !ok {
		return
	}
	body := strings.Repeat("x", int(max(h.ContentLength, 0)))
	want, err := http.ReadRequest(bufio.NewReader(io.MultiReader(bytes.NewReader(b), strings.NewReader(body))))
	if err != nil {
		t.Fatalf("fast path accepted %q, net/http refuses it: %v", b, err)
	}
	got := h.Request(strings.NewReader(body))
	type view struct {
		Method, Scheme, URLHost, Path, EscapedPath, RawQuery, Host, RequestURI string
		Header                                                                 http.Header
		ContentLength                                                          int64
		Close                                                                  bool
		Body                                                                   string
	}
	see := func(r *http.Request) view {
		bb, _ := io.ReadAll(r.Body)
		return view{r.Method, r.URL.Scheme, r.URL.Host, r.URL.Path, r.URL.EscapedPath(), r.URL.RawQuery, r.Host, r.RequestURI, r.Header, r.ContentLength, r.Close, string(bb)}
	}
	if d := cmp.Diff(see(want), see(got)); d != "" {
		t.Fatalf("fast path and net/http disagree on %q (-net/http +fast):\n%s", b, d)
	}
}

func TestParseResponse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
		status   int
		length   int64
	}{
		{"200 with length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\n", true, 200, 5},
		{"no reason", "HTTP/1.1 204\r\n\r\n", true, 204, -1},
		{"close", "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", true, 503, 0},
		{"interim", "HTTP/1.1 100 Continue\r\n\r\n", false, 0, 0},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0, 0},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, 0, 0},
		{"bad code", "HTTP/1.1 2x0 OK\r\n\r\n", false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := ParseResponse([]byte(tc.in))
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if ok && (h.Status != tc.status || h.ContentLength != tc.length) {
				t.Fatalf("status %d length %d, want %d %d", h.Status, h.ContentLength, tc.status, tc.length)
			}
			if ok {
				want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(tc.in)), nil)
				if err != nil {
					t.Fatalf("net/http refuses what the fast path accepted: %v", err)
				}
				if d := cmp.Diff(want.Header, h.Header); d != "" || want.StatusCode != h.Status || want.Close != h.Close {
					t.Fatalf("net/http disagrees: status %d close %v, header diff:\n%s", want.StatusCode, want.Close, d)
				}
			}
		})
	}
}

var fuzzScratch Scratch // shared by FuzzParseRequest's inputs, as one connection's requests share it

// FuzzParseRequest holds the fast path to net/http: whatever it accepts, net/http accepts
// with the same method, target, host, fields, length and close flag.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("GET /a?b=c HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\nx-a: 2\r\n\r\n"))
	f.Add([]byte("POST /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 2\r\nConnection: keep-alive, close\r\n\r\n"))
	f.Add([]byte("PUT /%41 HTTP/1.1\r\nhost: [::1]:80\r\n\r\n"))
	f.Add([]byte("GET http://svc.ns:80/x?y HTTP/1.1\r\nHost: svc\r\n\r\n"))
	for _, tc := range smuggling {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		n := End(in)
		if n < 0 {
			return
		}
		h, ok := ParseRequest(in[:n])
		if ok && h.ContentLength > 1<<20 {
			return // the comparison would build a huge body
		}
		sameAsNetHTTP(t, in[:n])
		// Reusing a connection's scratch memory (left as the previous input left it)
		// changes nothing.
		h2, ok2 := ParseRequestInto(in[:n], &fuzzScratch)
		if ok2 != ok {
			t.Fatalf("on %q ParseRequestInto says %v, ParseRequest %v", in[:n], ok2, ok)
		}
		if ok {
			a, b := h.Request(nil), h2.RequestIn(&fuzzScratch, nil)
			if d := cmp.Diff(a.Header, b.Header); d != "" || a.Method != b.Method || a.Host != b.Host ||
				a.URL.String() != b.URL.String() || a.ContentLength != b.ContentLength || a.Close != b.Close {
				t.Fatalf("on %q the reused scratch differs: %s", in[:n], d)
			}
		}
	})
}

// FuzzParseResponse: whatever the fast path accepts, net/http reads the same status,
// fields and close flag.
func FuzzParseResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		n := End(in)
		if n < 0 {
			return
		}
		h, ok := ParseResponse(in[:n])
		if !ok {
			return
		}
		want, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(in[:n])), nil)
		if err != nil {
			t.Fatalf("fast path accepted %q, net/http refuses it: %v", in[:n], err)
		}
		if d := cmp.Diff(want.Header, h.Header); d != "" || want.StatusCode != h.Status || want.Close != h.Close {
			t.Fatalf("on %q net/http reads status %d close %v; fast path %d %v; header diff:\n%s", in[:n], want.StatusCode, want.Close, h.Status, h.Close, d)
		}
		if h.ContentLength >= 0 && want.ContentLength != h.ContentLength && h.Status != 204 && h.Status != 304 {
			t.Fatalf("on %q net/http reads length %d, fast path %d", in[:n], want.ContentLength, h.ContentLength)
		}
	})
}
