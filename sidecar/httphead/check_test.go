package httphead

import (
	"strings"
	"testing"
)

// smuggling is the request set of issue 12 item 4 (RFC 9112 §6.1, §6.3, §5.2, §2.2):
// each head is refused with the given status. The fuzz targets take them as seeds.
var smuggling = []struct {
	name, in string
	status   int
}{
	{"CL and TE", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
	{"TE and CL", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400},
	{"duplicate CL", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", 400},
	{"conflicting CL", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\ncontent-length: 40\r\n\r\n", 400},
	{"CL list", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4, 4\r\n\r\n", 400},
	{"signed CL", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: +4\r\n\r\n", 400},
	{"gzip, chunked", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
	{"chunked, identity", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 501},
	{"xchunked", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: xchunked\r\n\r\n", 501},
	{"two TE", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: svc\r\nX: a\r\n b\r\n\r\n", 400},
	{"obs-fold of TE", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 400},
	{"bare LF in a field", "GET / HTTP/1.1\r\nHost: svc\nX: a\r\n\r\n", 400},
	{"bare LF after the request line", "GET / HTTP/1.1\nHost: svc\r\n\r\n", 400},
	{"bare LF end", "GET / HTTP/1.1\r\nHost: svc\r\n\n", 400},
	{"space before colon", "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding : chunked\r\n\r\n", 400},
	{"tab before colon", "GET / HTTP/1.1\r\nHost\t: svc\r\n\r\n", 400},
}

func TestCheckRequestRefusesSmuggling(t *testing.T) {
	for _, tc := range smuggling {
		t.Run(tc.name, func(t *testing.T) {
			_, p := CheckRequest([]byte(tc.in), Limits{DefaultMaxHeadBytes, DefaultMaxHeaders})
			if p == nil || p.Status != tc.status {
				t.Fatalf("CheckRequest = %v, want status %d", p, tc.status)
			}
			// A head refused for its framing is refused before it is complete too, or
			// when it is: never accepted from a prefix.
			for i := range len(tc.in) {
				if end, _ := CheckRequest([]byte(tc.in[:i]), Limits{}); end > 0 {
					t.Fatalf("prefix %q accepted", tc.in[:i])
				}
			}
		})
	}
}

func TestCheckRequestAccepts(t *testing.T) {
	for _, in := range []string{
		"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabcGET",
		"POST / HTTP/1.1\r\nHost: svc\r\ntransfer-encoding: Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: svc\r\nX: a:b\r\n\r\n",
	} {
		end, p := CheckRequest([]byte(in), Limits{DefaultMaxHeadBytes, DefaultMaxHeaders})
		if p != nil || end != End([]byte(in)) {
			t.Errorf("CheckRequest(%q) = %d, %v; want %d, nil", in, end, p, End([]byte(in)))
		}
	}
	if end, p := CheckRequest([]byte("GET / HTTP/1.1\r\nHost: svc\r\n"), Limits{}); end != 0 || p != nil {
		t.Errorf("an incomplete head: %d %v, want 0 nil", end, p)
	}
}

func TestCheckRequestLimits(t *testing.T) {
	lim := Limits{MaxHeadBytes: 1024, MaxHeaders: 4}
	head := func(fields int, valueLen int) string {
		var b strings.Builder
		b.WriteString("GET / HTTP/1.1\r\n")
		for range fields {
			b.WriteString("X: " + strings.Repeat("v", valueLen) + "\r\n")
		}
		return b.String() + "\r\n"
	}
	for _, tc := range []struct {
		name   string
		in     string
		status int // 0: accepted
	}{
		{"at the count limit", head(4, 1), 0},
		{"over the count limit", head(5, 1), 431},
		{"over the count limit, incomplete", head(5, 1)[:len(head(5, 1))-2], 431},
		{"at the size limit", head(1, 1024-len(head(1, 0))), 0},
		{"one byte over the size limit", head(1, 1025-len(head(1, 0))), 431},
		{"a long line never ending", "GET / HTTP/1.1\r\nX: " + strings.Repeat("v", 2000), 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			end, p := CheckRequest([]byte(tc.in), lim)
			switch {
			case tc.status == 0 && (p != nil || end != len(tc.in)):
				t.Fatalf("got %d %v, want the head (%d bytes) accepted", end, p, len(tc.in))
			case tc.status != 0 && (p == nil || p.Status != tc.status):
				t.Fatalf("got %d %v, want %d", end, p, tc.status)
			case p != nil && !strings.Contains(p.Reason, "max_"):
				t.Fatalf("reason %q does not name the limit", p.Reason)
			}
		})
	}
}

func TestCheckResponse(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", false},
		{"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", false},
		{"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", false},
	} {
		end, p := CheckResponse([]byte(tc.in))
		if ok := p == nil && end == len(tc.in); ok != tc.ok || (p != nil && p.Status != 502) {
			t.Errorf("CheckResponse(%q) = %d, %v; want accepted %v (else 502)", tc.in, end, p, tc.ok)
		}
	}
}

// FuzzCheckRequest: a head CheckRequest accepts is exactly the head End finds, and the
// fast parser never accepts one CheckRequest refuses.
func FuzzCheckRequest(f *testing.F) {
	for _, tc := range smuggling {
		f.Add([]byte(tc.in))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: svc\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		end, p := CheckRequest(in, Limits{DefaultMaxHeadBytes, DefaultMaxHeaders})
		if p == nil && end > 0 && end != End(in) {
			t.Fatalf("on %q CheckRequest ends the head at %d, End at %d", in, end, End(in))
		}
		if n := End(in); n > 0 && p != nil && p.Status != 431 {
			if _, ok := ParseRequest(in[:n]); ok {
				t.Fatalf("on %q the fast parser accepts what CheckRequest refuses: %v", in[:n], p)
			}
		}
	})
}

var typicalHead = []byte("GET /api/v1/reviews/42?detail=full HTTP/1.1\r\nHost: reviews\r\nUser-Agent: Go-http-client/1.1\r\n" +
	"Accept: application/json\r\nX-Request-Id: 0b7e4f0c-6a0e-4c1a-9f6e-3d1e2c7b9a10\r\nAccept-Encoding: gzip\r\n\r\n")

// BenchmarkCheckRequest against BenchmarkEnd: what the checks add per request on the
// loop's path, which used to call End alone.
func BenchmarkCheckRequest(b *testing.B) {
	lim := Limits{DefaultMaxHeadBytes, DefaultMaxHeaders}
	for b.Loop() {
		if end, p := CheckRequest(typicalHead, lim); end != len(typicalHead) || p != nil {
			b.Fatal(end, p)
		}
	}
}

func BenchmarkEnd(b *testing.B) {
	for b.Loop() {
		if End(typicalHead) != len(typicalHead) {
			b.Fatal()
		}
	}
}
