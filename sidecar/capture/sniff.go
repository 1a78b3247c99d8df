package capture

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// sniffMax bounds what sniffing reads: enough for the longest HTTP method and its space,
// and the h2 preface's first line; a request head that sniffing reads beyond it is handed
// on whole with the connection.
const sniffMax = 4096

// httpMethods are the request methods http_inspector recognises (RFC 9110 and WebDAV's
// common ones), each with its space.
var httpMethods = [][]byte{[]byte("GET "), []byte("POST "), []byte("PUT "), []byte("DELETE "), []byte("HEAD "),
	[]byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE "), []byte("PROPFIND "),
	[]byte("PROPPATCH "), []byte("MKCOL "), []byte("COPY "), []byte("MOVE "), []byte("LOCK "), []byte("UNLOCK ")}

var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// classify says whether b is (the start of) an HTTP/1 request line or the h2 preface:
// decided is false while b is still a prefix of one of them.
func classify(b []byte) (isHTTP, decided bool) {
	undecided := false
	for _, m := range append(httpMethods, h2Preface) {
		n := min(len(b), len(m))
		if !bytes.Equal(b[:n], m[:n]) {
			continue
		}
		if n == len(m) {
			return true, true
		}
		undecided = true
	}
	return false, !undecided
}

// sniff reads the connection's first bytes until they show HTTP (an HTTP/1 request line's
// method or the h2 preface) or show otherwise, for at most timeout. A client that sends
// nothing in that time is not HTTP: a server-first protocol, proxied as TCP. It returns
// what it read, which the chain's handler must see first. read holds bytes already read
// from nc (mutual TLS's peek, meshtls.go): they are looked at first.
func sniff(nc net.Conn, timeout time.Duration, read []byte) (isHTTP bool, in []byte) {
	if ok, decided := classify(read); decided && len(read) > 0 {
		return ok, read
	}
	_ = nc.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = nc.SetReadDeadline(time.Time{}) }()
	buf := append(make([]byte, 0, max(64, len(read))), read...)
	for len(buf) < sniffMax {
		if cap(buf) == len(buf) {
			nb := make([]byte, len(buf), min(2*cap(buf), sniffMax))
			copy(nb, buf)
			buf = nb
		}
		n, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if ok, decided := classify(buf); decided {
			return ok, buf
		}
		if err != nil {
			return false, buf
		}
	}
	return false, buf
}

// refuseHTTP answers an HTTP/1 request to a destination REGISTRY_ONLY blocks with a 502
// that names it (its Host, else the address), reading at most sniffMax bytes of the head
// for a second, and closes the connection.
func refuseHTTP(nc net.Conn, in []byte, dst netip.AddrPort) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(time.Second))
	buf := append(make([]byte, 0, sniffMax), in...)
	for !bytes.Contains(buf, []byte("\r\n\r\n")) && len(buf) < sniffMax {
		n, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			break
		}
	}
	host := dst.String()
	for _, line := range bytes.Split(buf, []byte("\r\n")) {
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(bytes.TrimSpace(k), []byte("host")) {
			host = string(bytes.TrimSpace(v))
			break
		}
	}
	msg := "blocked by REGISTRY_ONLY: " + host + " is not a Service of the mesh; create a Service or MeshRoute for it, or run the manager with --outbound-traffic-policy=ALLOW_ANY\n"
	_, _ = nc.Write([]byte("HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(msg)) + "\r\n\r\n" + msg))
}
