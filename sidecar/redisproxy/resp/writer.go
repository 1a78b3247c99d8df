package resp

import (
	"errors"
	"strconv"
)

// AppendError appends an error reply; msg starts with its code (ERR, NOAUTH…).
// CR and LF in msg are replaced so the reply stays one line.
func AppendError(dst []byte, msg string) []byte {
	dst = append(dst, '-')
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		dst = append(dst, c)
	}
	return append(dst, '\r', '\n')
}

// AppendStatus appends a simple string reply such as +OK.
func AppendStatus(dst []byte, s string) []byte {
	dst = append(dst, '+')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}

// AppendInt appends an integer reply.
func AppendInt(dst []byte, n int64) []byte {
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, '\r', '\n')
}

// AppendBulk appends a bulk string.
func AppendBulk(dst, b []byte) []byte {
	dst = append(dst, '$')
	dst = strconv.AppendInt(dst, int64(len(b)), 10)
	dst = append(dst, '\r', '\n')
	dst = append(dst, b...)
	return append(dst, '\r', '\n')
}

// AppendArrayHeader appends the header of an n-element array.
func AppendArrayHeader(dst []byte, n int) []byte {
	dst = append(dst, '*')
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, '\r', '\n')
}

// AppendCommand appends a request made of the given arguments.
func AppendCommand(dst []byte, args ...[]byte) []byte {
	dst = AppendArrayHeader(dst, len(args))
	for _, a := range args {
		dst = AppendBulk(dst, a)
	}
	return dst
}

var errNotInt = errors.New("reply is not an integer")

// ReplyInt decodes an integer reply such as ":3\r\n".
func ReplyInt(raw []byte) (int64, error) {
	if len(raw) < 4 || raw[0] != ':' {
		return 0, errNotInt
	}
	return strconv.ParseInt(string(raw[1:len(raw)-2]), 10, 64)
}

// IsError reports whether raw is an error reply.
func IsError(raw []byte) bool { return len(raw) > 0 && raw[0] == '-' }

// ArrayElements calls fn with the raw bytes of each element of an array reply.
func ArrayElements(raw []byte, fn func(elem []byte)) error {
	if len(raw) == 0 || raw[0] != '*' {
		return errors.New("reply is not an array")
	}
	n, p, err := parseLen(raw, 1)
	if err != nil {
		return err
	}
	for k := int64(0); k < n; k++ {
		end, err := replyLen(raw, p, 1)
		if err != nil {
			return err
		}
		fn(raw[p:end])
		p = end
	}
	return nil
}

// ElementEnd returns the end index of the reply element starting at raw[i].
func ElementEnd(raw []byte, i int) (int, error) {
	end, err := replyLen(raw, i, 1)
	if errors.Is(err, errIncomplete) {
		return 0, &ProtocolError{"truncated reply"}
	}
	return end, err
}
