package resp

import "bytes"

// Inline commands are split exactly as redis-server splits them
// (sdssplitargs in redis/redis src/sds.c, called by processInlineBuffer in
// src/networking.c), so the proxy routes on the same key the server stores:
//
//   - blanks (isspace: space, \t, \n, \v, \f, \r) separate arguments; an
//     unquoted argument ends at space, \t, \n or \r only;
//   - "double quotes" understand \n \r \t \b \a, \xHH (two hex digits) and
//     \<c> for any other c;
//   - 'single quotes' understand only \';
//   - a closing quote must be followed by a blank or the end of the line;
//   - a quote opened inside an unquoted argument continues it (a"b c" is one
//     argument, "ab c").
//
// A malformed line is ErrUnbalancedQuotes, as Redis answers it. A NUL byte
// ends the line for sdssplitargs (a C string) and hides the newline from
// Redis's strchr, so Redis never runs such a line; the proxy refuses it.

// ErrUnbalancedQuotes is Redis's reply text for an inline line that
// sdssplitargs rejects.
var ErrUnbalancedQuotes = &ProtocolError{"unbalanced quotes in request"}

// errInlineNUL refuses an inline line holding a NUL byte.
var errInlineNUL = &ProtocolError{"NUL byte in inline request; send binary data as a RESP array"}

// isSpace is C's isspace in the C locale.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func hexVal(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// SplitInline splits line (without its line ending) into arguments as
// sdssplitargs does. The decoded bytes are appended to dst and each
// argument's span within dst to spans.
func SplitInline(dst []byte, spans [][2]int, line []byte) ([]byte, [][2]int, error) {
	if bytes.IndexByte(line, 0) >= 0 {
		return dst, spans, errInlineNUL
	}
	// at mirrors reading a C string: past the end there is a NUL.
	at := func(i int) byte {
		if i < len(line) {
			return line[i]
		}
		return 0
	}
	p := 0
	for {
		for p < len(line) && isSpace(line[p]) {
			p++
		}
		if p >= len(line) {
			return dst, spans, nil
		}
		start := len(dst)
		inq, insq, done := false, false, false
		for !done {
			c := at(p)
			switch {
			case inq:
				switch {
				case c == '\\' && at(p+1) == 'x' && isHex(at(p+2)) && isHex(at(p+3)):
					dst = append(dst, hexVal(at(p+2))<<4|hexVal(at(p+3)))
					p += 3
				case c == '\\' && at(p+1) != 0:
					p++
					e := at(p)
					switch e {
					case 'n':
						e = '\n'
					case 'r':
						e = '\r'
					case 't':
						e = '\t'
					case 'b':
						e = '\b'
					case 'a':
						e = '\a'
					}
					dst = append(dst, e)
				case c == '"':
					if n := at(p + 1); n != 0 && !isSpace(n) {
						return dst, spans, ErrUnbalancedQuotes
					}
					done = true
				case c == 0:
					return dst, spans, ErrUnbalancedQuotes
				default:
					dst = append(dst, c)
				}
			case insq:
				switch {
				case c == '\\' && at(p+1) == '\'':
					p++
					dst = append(dst, '\'')
				case c == '\'':
					if n := at(p + 1); n != 0 && !isSpace(n) {
						return dst, spans, ErrUnbalancedQuotes
					}
					done = true
				case c == 0:
					return dst, spans, ErrUnbalancedQuotes
				default:
					dst = append(dst, c)
				}
			default:
				switch c {
				case ' ', '\n', '\r', '\t', 0:
					done = true
				case '"':
					inq = true
				case '\'':
					insq = true
				default:
					dst = append(dst, c)
				}
			}
			if p < len(line) {
				p++
			}
		}
		spans = append(spans, [2]int{start, len(dst)})
	}
}
