package httphead

import (
	"bufio"
	"bytes"
	"net/http"
	"strconv"
)

// The checks every HTTP/1.1 head passes before either parser (the fast one here or
// net/http's) sees it, on both of the sidecar's paths. They bound what one connection may
// make the sidecar buffer (Limits) and refuse the framing that lets two parsers in a chain
// disagree on where a message ends — request smuggling (RFC 9112 §6.1, §6.3, §5.2, §2.2).
// net/http alone would accept several of these: it drops Content-Length when
// Transfer-Encoding is present, merges identical repeated Content-Length values, unfolds
// obsolete line folding and takes a bare LF as a line end.

// Limits bound one request head.
type Limits struct {
	// MaxHeadBytes bounds the whole head: request line, header fields and the blank line.
	MaxHeadBytes int
	// MaxHeaders bounds the number of header field lines.
	MaxHeaders int
}

// Envoy's defaults: HttpConnectionManager.max_request_headers_kb (60 KiB) and
// HttpProtocolOptions.max_headers_count (100).
const (
	DefaultMaxHeadBytes = 60 << 10
	DefaultMaxHeaders   = 100
)

// Problem says why a head is refused: the status to answer (431, 400, 501, or 502 for a
// response from upstream) and why, in words for the response body.
type Problem struct {
	Status int
	Reason string
}

func (p *Problem) Error() string { return strconv.Itoa(p.Status) + " " + p.Reason }

func tooLarge(reason string) *Problem {
	return &Problem{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: reason}
}

func bad(reason string) *Problem { return &Problem{Status: http.StatusBadRequest, Reason: reason} }

// CheckRequest looks for one request head at the start of b, the bytes read so far from a
// connection. It returns the head's length once the head is whole and passes the checks;
// 0 and nil while more bytes are needed; or the problem as soon as one is seen (an
// oversized or malformed head is refused before it is complete, so nothing buffers more
// than lim.MaxHeadBytes of it). Zero limits mean no limit.
//
// Checks: the head ends within MaxHeadBytes and has at most MaxHeaders fields (431);
// every line ends in CRLF (a bare LF is refused, as llhttp does unless its lenient flags
// are set); no obsolete line folding; no whitespace between a field name and its colon;
// Content-Length at most once and all digits; Transfer-Encoding at most once and exactly
// "chunked" (other codings: 501); never both Content-Length and Transfer-Encoding (400).
// What it does not check (methods, targets, Host, field syntax) the parsers do.
func CheckRequest(b []byte, lim Limits) (int, *Problem) {
	return check(b, lim, true)
}

// CheckResponse applies the same framing checks to a response head from upstream, with no
// size limits; a problem is answered 502 and the upstream connection is not reused.
func CheckResponse(b []byte) (int, *Problem) {
	end, p := check(b, Limits{}, false)
	if p != nil {
		p.Status = http.StatusBadGateway
		p.Reason = "the upstream response is malformed: " + p.Reason
	}
	return end, p
}

func check(b []byte, lim Limits, request bool) (int, *Problem) {
	pos, fields := 0, 0
	var cl, te []byte
	hasCL, hasTE := false, false
	for {
		i := bytes.IndexByte(b[pos:], '\n')
		if i < 0 {
			if lim.MaxHeadBytes > 0 && len(b) >= lim.MaxHeadBytes {
				return 0, tooLarge("request headers exceed " + strconv.Itoa(lim.MaxHeadBytes) + " bytes (max_request_headers_kb)")
			}
			return 0, nil
		}
		nl := pos + i
		if lim.MaxHeadBytes > 0 && nl >= lim.MaxHeadBytes {
			return 0, tooLarge("request headers exceed " + strconv.Itoa(lim.MaxHeadBytes) + " bytes (max_request_headers_kb)")
		}
		if nl == pos || b[nl-1] != '\r' {
			return 0, bad("a line ends in a bare LF; HTTP/1.1 lines end in CRLF")
		}
		line := b[pos : nl-1]
		first := pos == 0
		pos = nl + 1
		if first {
			continue // the request or status line: the parsers check it
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return 0, bad("obsolete line folding (a header line starting with whitespace) is not accepted")
		}
		fields++
		if lim.MaxHeaders > 0 && fields > lim.MaxHeaders {
			return 0, tooLarge("more than " + strconv.Itoa(lim.MaxHeaders) + " header fields (max_headers_count)")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue // not a field line: the parsers refuse it
		}
		if c := line[colon-1]; c == ' ' || c == '\t' {
			return 0, bad("whitespace between a header field name and its colon")
		}
		name, value := line[:colon], trimBytes(line[colon+1:])
		switch {
		case len(name) == len("content-length") && bytes.EqualFold(name, []byte("content-length")):
			if hasCL {
				return 0, bad("more than one Content-Length header")
			}
			hasCL, cl = true, value
		case len(name) == len("transfer-encoding") && bytes.EqualFold(name, []byte("transfer-encoding")):
			if hasTE {
				return 0, bad("more than one Transfer-Encoding header")
			}
			hasTE, te = true, value
		}
	}
	if hasCL && (len(cl) == 0 || len(cl) > 18 || !digits(string(cl))) {
		return 0, bad("invalid Content-Length " + strconv.Quote(string(cl)))
	}
	if hasTE {
		if hasCL {
			return 0, bad("both Content-Length and Transfer-Encoding are present")
		}
		if !bytes.EqualFold(te, []byte("chunked")) {
			p := &Problem{Status: http.StatusNotImplemented, Reason: "Transfer-Encoding " + strconv.Quote(string(te)) + " is not supported; only chunked is"}
			if !request {
				p.Status = http.StatusBadGateway
			}
			return 0, p
		}
	}
	return pos, nil
}

func trimBytes(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// AppendProblem appends the response that refuses a request for p: the status, a
// plain-text body saying why, and Connection: close (the connection is closed after it,
// since where the refused request ends is unknown).
func AppendProblem(dst []byte, p *Problem) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(p.Status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(p.Status)...)
	dst = append(dst, "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(p.Reason)+1), 10)
	dst = append(dst, "\r\n\r\n"...)
	dst = append(dst, p.Reason...)
	return append(dst, '\n')
}

// CheckResponseFrom reads from br until it holds a whole response head, or its buffer is
// full, and checks that head with CheckResponse. A head longer than br's buffer is left
// unchecked (nil), as is one cut short by a read error: the parser reports that.
func CheckResponseFrom(br *bufio.Reader) *Problem {
	for {
		buf, _ := br.Peek(br.Buffered())
		end, p := CheckResponse(buf)
		if p != nil {
			return p
		}
		if end > 0 || br.Buffered() == br.Size() {
			return nil
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return nil
		}
	}
}
