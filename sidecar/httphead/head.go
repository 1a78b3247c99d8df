// Package httphead parses the heads of HTTP/1.1 requests and responses that are already
// buffered in full, for the sidecar's fast path. It accepts a strict subset of the
// protocol — the shape nearly every request and response between services has — and
// says "not mine" for everything else, which the caller then hands to net/http's own
// parser (http.ReadRequest, http.ReadResponse). So the fast path can be stricter than
// net/http but never more lenient: anything it accepts, net/http would accept with the
// same meaning. The fuzz tests hold it to that.
//
// Why: net/http's parsers allocate a dozen objects per message and were a sixth of the
// proxy's CPU per request. Here all strings of one head come from a single allocation.
package httphead

import (
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/net/http/httpguts"
)

// Head is the parsed head of one message.
type Head struct {
	// Request line (requests): Method and Target; status line (responses): Status.
	Method, Target string
	// Authority is the host[:port] of an absolute-form target ("http://svc/p", what an
	// app sends to a proxy named in HTTP_PROXY); empty for origin form ("/p").
	Authority     string
	Status        int
	Header        http.Header
	Host          string // requests: the Host header, removed from Header as net/http does
	ContentLength int64  // -1: none given
	Close         bool   // Connection: close
	connTokens    bool   // a Connection header names other headers
}

var crlf2 = []byte("\r\n\r\n")

// End returns the length of the head at the start of b (through the blank line), or -1
// if b does not hold a whole head yet.
func End(b []byte) int {
	i := bytes.Index(b, crlf2)
	if i < 0 {
		return -1
	}
	return i + 4
}

// ParseRequest parses a request head occupying all of b (as End measured it). ok is
// false for anything outside the fast path: the caller uses http.ReadRequest instead.
func ParseRequest(b []byte) (h Head, ok bool) {
	return parseRequest(b, nil)
}

// Scratch is what one connection's requests reuse, one request at a time: the header
// map and its value slices, and the http.Request that RequestIn fills. A request parsed
// with it stays valid until the next ParseRequestInto with the same Scratch.
type Scratch struct {
	header http.Header
	vals   []string
	x      request
}

// ParseRequestInto is ParseRequest reusing sc's memory.
func ParseRequestInto(b []byte, sc *Scratch) (h Head, ok bool) {
	return parseRequest(b, sc)
}

func parseRequest(b []byte, sc *Scratch) (h Head, ok bool) {
	s := string(b[:len(b)-2]) // keep one CRLF so every line ends with one
	line, rest, ok := cutLine(s)
	if !ok {
		return h, false
	}
	sp := indexByte(line, ' ')
	if sp <= 0 || !upperToken(line[:sp]) {
		return h, false
	}
	h.Method = line[:sp]
	line = line[sp+1:]
	sp = indexByte(line, ' ')
	if sp <= 0 || line[sp+1:] != "HTTP/1.1" {
		return h, false
	}
	h.Target = line[:sp]
	path := h.Target
	if strings.HasPrefix(path, "http://") {
		// Absolute form: the authority is the request's host, as net/http reads it.
		i := strings.IndexByte(path[len("http://"):], '/')
		if i <= 0 {
			return h, false
		}
		h.Authority, path = path[len("http://"):len("http://")+i], path[len("http://")+i:]
		if !authority(h.Authority) {
			return h, false
		}
	}
	if !originForm(path) || !h.parseFields(rest, true, true, sc) {
		return h, false
	}
	if h.Authority != "" {
		h.Host = h.Authority
	}
	if h.Host == "" || !httpguts.ValidHostHeader(h.Host) {
		return h, false
	}
	return h, true
}

// ParseResponse parses a response head occupying all of b. Interim (1xx) responses,
// bodies framed other than by Content-Length (except 204 and 304, which have none), and
// anything unusual are refused (ok false) and left to http.ReadResponse.
func ParseResponse(b []byte) (h Head, ok bool) {
	return parseResponse(string(b[:len(b)-2]), true)
}

// ScanResponse checks a response head as ParseResponse does and returns its status,
// Content-Length and Close, without building the header map (h.Header is nil) and
// without allocating. plain reports that the head can be forwarded line by line: its
// Connection headers name no header but themselves (only "close" and "keep-alive"), so
// dropping the Connection, Proxy-Connection and Keep-Alive lines removes every
// hop-by-hop header.
func ScanResponse(b []byte) (h Head, plain, ok bool) {
	h, ok = parseResponse(unsafe.String(unsafe.SliceData(b), len(b)-2), false)
	return h, ok && !h.connTokens, ok
}

func parseResponse(s string, keep bool) (h Head, ok bool) {
	line, rest, ok := cutLine(s)
	if !ok || len(line) < 12 || line[:9] != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return h, false
	}
	code, err := strconv.Atoi(line[9:12])
	if err != nil || code < 200 || code > 999 {
		return h, false
	}
	h.Status = code
	if !h.parseFields(rest, false, keep, nil) {
		return h, false
	}
	if h.ContentLength < 0 && code != 204 && code != 304 {
		return h, false // a body read until the connection closes: net/http's case
	}
	if h.Close && keep {
		delete(h.Header, "Connection") // as net/http does for responses
	}
	return h, true
}

// parseFields parses header lines, each ending in CRLF, into h.Header when keep is set.
// With sc, the map and the value array come from there.
func (h *Head) parseFields(s string, request, keep bool, sc *Scratch) bool {
	var vals []string
	if keep {
		n := 0
		for i := 0; i+1 < len(s); i++ {
			if s[i] == '\r' {
				n++
			}
		}
		if sc == nil {
			h.Header = make(http.Header, n)
			vals = make([]string, n) // one backing array for single-valued fields
		} else {
			if sc.header == nil {
				sc.header = make(http.Header, max(n, 8))
			} else {
				clear(sc.header)
			}
			if cap(sc.vals) < n {
				sc.vals = make([]string, max(n, 8))
			}
			h.Header, vals = sc.header, sc.vals[:n]
		}
	}
	h.ContentLength = -1
	sawHost := false // an empty Host is still a Host: a second one must be refused
	for len(s) > 0 {
		line, rest, ok := cutLine(s)
		if !ok {
			return false
		}
		s = rest
		colon := indexByte(line, ':')
		if colon <= 0 {
			return false
		}
		name := line[:colon]
		if !httpguts.ValidHeaderFieldName(name) { // also refuses space before the colon
			return false
		}
		value := trim(line[colon+1:])
		if !httpguts.ValidHeaderFieldValue(value) {
			return false
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		switch key {
		case "Host":
			if !request {
				break
			}
			if sawHost {
				return false // net/http refuses repeated Host, empty or not
			}
			sawHost = true
			h.Host = value
			continue
		case "Content-Length":
			if h.ContentLength >= 0 {
				return false // repeated: net/http's rules are subtle, let it decide
			}
			if !digits(value) || len(value) > 18 {
				return false
			}
			h.ContentLength, _ = strconv.ParseInt(value, 10, 64)
		case "Transfer-Encoding", "Expect", "Te", "Trailer", "Upgrade", "Pragma":
			return false // framing, interim responses, or (Pragma) a header net/http rewrites
		case "Connection":
			for tok := range strings.SplitSeq(value, ",") {
				switch tok = trim(tok); {
				case strings.EqualFold(tok, "close"):
					h.Close = true
				case tok != "" && !strings.EqualFold(tok, "keep-alive"):
					h.connTokens = true
				}
			}
		}
		if !keep {
			continue
		}
		if old := h.Header[key]; old != nil {
			h.Header[key] = append(old, value)
			continue
		}
		vals[0] = value
		h.Header[key] = vals[:1:1]
		vals = vals[1:]
	}
	return true
}

// cutLine splits s at the first CRLF; a bare LF or CR inside a line is refused.
func cutLine(s string) (line, rest string, ok bool) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r':
			if i+1 < len(s) && s[i+1] == '\n' {
				return s[:i], s[i+2:], true
			}
			return "", "", false
		case '\n':
			return "", "", false
		}
	}
	return "", "", false
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func trim(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func upperToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return len(s) > 0
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}

// originForm accepts "/path?query" targets whose path is made only of characters that
// need no escaping (so url.URL.EscapedPath gives back exactly what was sent) and whose
// query is printable ASCII. '%' escapes in the path, '*' and fragments go to net/http.
func originForm(t string) bool {
	if t[0] != '/' {
		return false
	}
	i := 0
	for ; i < len(t) && t[i] != '?'; i++ {
		if !pathChar[t[i]] {
			return false
		}
	}
	for ; i < len(t); i++ {
		if c := t[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return true
}

// authority accepts a host[:port] of letters, digits, '-', '.' and one ':' before a
// port; anything else (user info, IPv6 literals, escapes) goes to net/http.
func authority(a string) bool {
	host, port, hasPort := strings.Cut(a, ":")
	if host == "" || (hasPort && (!digits(port) || len(port) > 5)) {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// pathChar holds RFC 3986 unreserved characters, sub-delims, ':', '@' and '/'.
var pathChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~!$&'()*+,;=:@/" {
		t[c] = true
	}
	return t
}()

// Request builds the http.Request for a head parsed by ParseRequest, its body (if any)
// read from body. The URL's RawPath is the target's path as sent, which needs no
// unescaping, so EscapedPath returns it unchanged as it would after url.ParseRequestURI.
func (h *Head) Request(body io.Reader) *http.Request {
	return h.fill(&request{}, body) // one allocation for the request, its URL and its body reader
}

// RequestIn is Request building the http.Request in sc (valid until sc is reused).
func (h *Head) RequestIn(sc *Scratch, body io.Reader) *http.Request {
	return h.fill(&sc.x, body)
}

type request struct {
	req  http.Request
	url  url.URL
	body Body
}

func (h *Head) fill(x *request, body io.Reader) *http.Request {
	target := h.Target
	scheme := ""
	if h.Authority != "" {
		target, scheme = target[len("http://")+len(h.Authority):], "http"
	}
	path, query, _ := strings.Cut(target, "?")
	x.body = Body{}
	x.url = url.URL{Scheme: scheme, Host: h.Authority, Path: path, RawPath: path, RawQuery: query}
	x.req = http.Request{
		Method: h.Method, URL: &x.url,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h.Header, Host: h.Host, RequestURI: h.Target, Close: h.Close, Body: http.NoBody,
	}
	if h.ContentLength > 0 {
		x.req.ContentLength = h.ContentLength
		x.body = Body{R: body, N: h.ContentLength}
		x.req.Body = &x.body
	}
	return &x.req
}

// Body reads the N bytes of a message body framed by Content-Length from R (io.LimitReader
// and io.NopCloser in one allocation).
type Body struct {
	R io.Reader
	N int64
}

func (b *Body) Read(p []byte) (int, error) {
	if b.N <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.N {
		p = p[:b.N]
	}
	n, err := b.R.Read(p)
	b.N -= int64(n)
	if err == io.EOF && b.N > 0 {
		err = io.ErrUnexpectedEOF // the peer closed inside the body
	}
	return n, err
}

// Close does nothing: what is left of the body belongs to the connection.
func (b *Body) Close() error { return nil }
