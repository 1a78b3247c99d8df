package authz

import "strings"

// NormalizePath is the form paths are compared in: the query and fragment cut off,
// percent-encoded unreserved characters (RFC 3986 §2.3) decoded and other escapes' hex
// digits upper-cased, runs of slashes merged, and dot segments removed (§5.2.4). So
// /a/./b, //a/b, /a/x/../b and /%61/b are all /a/b to a rule, whatever the app makes
// of them: a DENY on /a/* cannot be stepped around by spelling the path differently.
// %2F stays encoded (it is not a separator to most apps). A target that does not start
// with / (the asterisk form of OPTIONS, an absolute URI) is compared as it is.
func NormalizePath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if !strings.HasPrefix(p, "/") || isNormal(p) {
		return p
	}
	// Decode unreserved escapes, upper-case the rest, merge slashes.
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
			d := unhex(p[i+1])<<4 | unhex(p[i+2])
			if isUnreserved(d) {
				c = d
				i += 2
			} else {
				b.WriteByte('%')
				b.WriteByte(upper(p[i+1]))
				b.WriteByte(upper(p[i+2]))
				i += 2
				continue
			}
		}
		if c == '/' && b.Len() > 0 && strings.HasSuffix(b.String(), "/") {
			continue
		}
		b.WriteByte(c)
	}
	return removeDots(b.String())
}

// isNormal reports whether p needs no work: no escape, no double slash, no dot segment.
func isNormal(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%':
			return false
		case '/':
			if i+1 < len(p) && p[i+1] == '/' {
				return false
			}
		case '.':
			if p[i-1] == '/' {
				return false // a segment starting with a dot: maybe . or ..
			}
		}
	}
	return true
}

// removeDots is RFC 3986 §5.2.4 on a path that starts with / and has no empty segments
// but maybe the last.
func removeDots(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
