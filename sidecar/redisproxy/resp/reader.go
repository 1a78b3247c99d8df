// Package resp reads and writes RESP2, the Redis wire protocol: requests
// (arrays of bulk strings, or inline commands) from clients and replies from
// servers. It parses in place from one growable buffer so the proxy's hot path
// allocates nothing per message; what it returns aliases that buffer and is
// valid until the next read.
package resp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Limits a Reader enforces, the same as redis-server's defaults.
const (
	MaxArgs      = 1 << 20   // elements in one request array
	MaxBulk      = 512 << 20 // bytes in one bulk string
	MaxInline    = 64 << 10  // bytes in one inline command or status line
	MaxDepth     = 8         // nesting of reply arrays
	initialBytes = 16 << 10
	// MaxRetained is the most buffer a Reader keeps once it has nothing
	// buffered: the buffer a large message needed is dropped after it, so a
	// connection that carried a 64 MB value once does not hold 64 MB for
	// the rest of its life.
	MaxRetained = 64 << 10
	// growAhead bounds how far ahead of the bytes received a Reader sizes
	// its buffer for a message whose length it knows.
	growAhead = 4
)

// ProtocolError is a malformed message; the connection cannot be resynced.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "Protocol error: " + e.Msg }

// IsProtocol reports whether err is a ProtocolError.
func IsProtocol(err error) bool {
	var pe *ProtocolError
	return errors.As(err, &pe)
}

type span struct{ start, end int }

const (
	modeNone uint8 = iota
	modeMulti
	modeInline
)

// errIncomplete means the buffer holds only part of a message.
var errIncomplete = errors.New("incomplete")

// Reader parses RESP messages from an io.Reader.
type Reader struct {
	rd   io.Reader
	buf  []byte
	r, w int
	args [][]byte
	// resumable request parsing state, offsets relative to r.r
	mode  uint8
	want  int64
	at    int
	spans []span
	// inline commands: their decoded arguments live in ibuf, not buf
	inline bool
	ibuf   []byte
	ispans [][2]int
	// need is how many bytes from r the message being parsed needs, when a
	// bulk length says so: the buffer grows to it at once instead of
	// doubling (one copy of a large value, not two).
	need int
}

// NewReader returns a Reader over rd.
func NewReader(rd io.Reader) *Reader {
	return &Reader{rd: rd, buf: make([]byte, initialBytes)}
}

// Space returns the free tail of the buffer for the next read, compacting,
// shrinking or growing the buffer first. Commit records how much of it was
// filled. Space invalidates what earlier calls returned.
func (r *Reader) Space() []byte {
	if n := r.w - r.r; len(r.buf) > MaxRetained && n <= initialBytes/2 && r.need <= initialBytes {
		// A large message is done: go back to a small buffer.
		nb := make([]byte, initialBytes)
		copy(nb, r.buf[r.r:r.w])
		r.buf, r.r, r.w = nb, 0, n
	}
	if r.r > 0 {
		n := copy(r.buf, r.buf[r.r:r.w])
		r.r, r.w = 0, n
	}
	size := 0
	switch {
	case r.need > len(r.buf) && r.need <= growAhead*r.w:
		// Much of a large message is here: room for all of it at once, so
		// it is copied once, not doubled up to twice its size. Only then:
		// a bare header claiming 512 MB must not allocate 512 MB.
		size = r.need
	case r.w == len(r.buf):
		size = 2 * len(r.buf)
	}
	if size > 0 {
		nb := make([]byte, size)
		copy(nb, r.buf[:r.w])
		r.buf = nb
	}
	return r.buf[r.w:]
}

// Detach gives the caller the buffer that holds everything returned so far,
// so a large message can be kept without a copy; the Reader moves what it
// has not returned yet to a new buffer.
func (r *Reader) Detach() {
	rest := r.buf[r.r:r.w]
	nb := make([]byte, max(initialBytes, len(rest)))
	r.w = copy(nb, rest)
	r.buf, r.r = nb, 0
}

// BufferSize is the size of the Reader's buffer (for tests of what it
// retains).
func (r *Reader) BufferSize() int { return len(r.buf) }

// Commit appends the n bytes just read into Space() to the buffered input.
func (r *Reader) Commit(n int) { r.w += n }

// fill reads more bytes from rd.
func (r *Reader) fill() error {
	n, err := r.rd.Read(r.Space())
	r.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	if err == io.EOF && r.w > r.r {
		err = io.ErrUnexpectedEOF // a message was cut off
	}
	return err
}

// NextCommand is ReadCommand without reading: it parses the next request
// from what is buffered and reports ok=false when that is not a whole one.
// raw is nil for an inline command: its arguments are decoded from quotes and
// escapes, so the line itself must never be forwarded (the server would
// parse it again); re-encode the arguments with AppendCommand.
func (r *Reader) NextCommand() (args [][]byte, raw []byte, ok bool, err error) {
	for r.w > r.r {
		n, err := r.parseCommand(r.buf[r.r:r.w])
		if errors.Is(err, errIncomplete) {
			return nil, nil, false, nil
		}
		r.need = 0
		if err != nil {
			return nil, nil, false, err
		}
		raw = r.buf[r.r : r.r+n]
		r.r += n
		if len(r.args) == 0 {
			continue // empty inline line or empty array, skipped as Redis does
		}
		if r.inline {
			raw = nil
		}
		return r.args, raw, true, nil
	}
	return nil, nil, false, nil
}

// NextReply is ReadReply without reading.
func (r *Reader) NextReply() (raw []byte, ok bool, err error) {
	if r.w == r.r {
		return nil, false, nil
	}
	n, err := replyLen(r.buf[r.r:r.w], 0, 0)
	if errors.Is(err, errIncomplete) {
		r.need = bulkNeed(r.buf[r.r:r.w])
		return nil, false, nil
	}
	r.need = 0
	if err != nil {
		return nil, false, err
	}
	raw = r.buf[r.r : r.r+n]
	r.r += n
	return raw, true, nil
}

// ReadCommand returns the next request's arguments and its raw bytes. Both
// alias the Reader's buffers. Inline commands are split as redis-server
// splits them (see SplitInline) and have no raw bytes; an empty inline line
// is skipped.
func (r *Reader) ReadCommand() (args [][]byte, raw []byte, err error) {
	for {
		args, raw, ok, err := r.NextCommand()
		if ok || err != nil {
			return args, raw, err
		}
		if err := r.fill(); err != nil {
			return nil, nil, err
		}
	}
}

// parseCommand parses one request at the start of b into r.args and returns
// its length. It resumes where the previous incomplete attempt stopped, so a
// request trickling in byte by byte costs linear, not quadratic, time.
func (r *Reader) parseCommand(b []byte) (int, error) {
	r.inline = false
	switch r.mode {
	case modeNone:
		if b[0] != '*' {
			r.mode, r.at = modeInline, 0
			return r.parseInline(b)
		}
		n, pos, err := parseLen(b, 1)
		if err != nil {
			return 0, err
		}
		if n > MaxArgs {
			return 0, &ProtocolError{"invalid multibulk length"}
		}
		r.mode, r.want, r.at, r.spans = modeMulti, n, pos, r.spans[:0]
	case modeInline:
		return r.parseInline(b)
	}
	for int64(len(r.spans)) < r.want {
		pos := r.at
		if pos >= len(b) {
			return 0, errIncomplete
		}
		if b[pos] != '$' {
			return 0, &ProtocolError{fmt.Sprintf("expected '$', got '%c'", b[pos])}
		}
		l, p, err := parseLen(b, pos+1)
		if err != nil {
			return 0, err
		}
		if l < 0 || l > MaxBulk {
			return 0, &ProtocolError{"invalid bulk length"}
		}
		end := p + int(l)
		if end+2 > len(b) {
			r.need = end + 2
			return 0, errIncomplete
		}
		if b[end] != '\r' || b[end+1] != '\n' {
			return 0, &ProtocolError{"bulk string not terminated by CRLF"}
		}
		r.spans = append(r.spans, span{p, end})
		r.at = end + 2
	}
	r.args = r.args[:0]
	for _, sp := range r.spans {
		r.args = append(r.args, b[sp.start:sp.end:sp.end])
	}
	r.mode = modeNone
	return r.at, nil
}

func (r *Reader) parseInline(b []byte) (int, error) {
	end := -1
	if i := bytes.IndexByte(b[r.at:], '\n'); i >= 0 {
		end = r.at + i
	}
	// Redis refuses more than MaxInline bytes without a newline
	// (PROTO_INLINE_MAX_SIZE); the proxy refuses a longer line even when its
	// newline came in the same read.
	if (end < 0 && len(b) > MaxInline) || end > MaxInline {
		return 0, &ProtocolError{"too big inline request"}
	}
	if end < 0 {
		r.at = len(b)
		return 0, errIncomplete
	}
	r.mode = modeNone
	line := b[:end]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	var err error
	r.ibuf, r.ispans, err = SplitInline(r.ibuf[:0], r.ispans[:0], line)
	if err != nil {
		return 0, err
	}
	r.inline = true
	r.args = r.args[:0]
	for _, sp := range r.ispans {
		r.args = append(r.args, r.ibuf[sp[0]:sp[1]:sp[1]])
	}
	return end + 1, nil
}

// bulkNeed returns the length of the bulk reply that b starts with, or 0
// when b does not start with a whole bulk header.
func bulkNeed(b []byte) int {
	if len(b) == 0 || b[0] != '$' {
		return 0
	}
	l, p, err := parseLen(b, 1)
	if err != nil || l < 0 || l > MaxBulk {
		return 0
	}
	return p + int(l) + 2
}

// parseLen parses a decimal (optionally negative) integer starting at b[i]
// and terminated by CRLF; it returns the value and the index after CRLF.
func parseLen(b []byte, i int) (int64, int, error) {
	neg := false
	if i < len(b) && b[i] == '-' {
		neg = true
		i++
	}
	var n int64
	digits := 0
	for ; i < len(b); i++ {
		c := b[i]
		if c == '\r' {
			if i+1 >= len(b) {
				return 0, 0, errIncomplete
			}
			if b[i+1] != '\n' || digits == 0 {
				return 0, 0, &ProtocolError{"invalid length"}
			}
			if neg {
				n = -n
			}
			return n, i + 2, nil
		}
		if c < '0' || c > '9' || digits > 18 {
			return 0, 0, &ProtocolError{"invalid length"}
		}
		n = n*10 + int64(c-'0')
		digits++
	}
	return 0, 0, errIncomplete
}

// ReadReply returns the raw bytes of the next complete reply (aliasing the
// buffer).
func (r *Reader) ReadReply() ([]byte, error) {
	for {
		raw, ok, err := r.NextReply()
		if ok || err != nil {
			return raw, err
		}
		if err := r.fill(); err != nil {
			return nil, err
		}
	}
}

// replyLen returns the end index of the reply starting at b[i].
func replyLen(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, errIncomplete
	}
	switch b[i] {
	case '+', '-', ':':
		for j := i + 1; j < len(b); j++ {
			if b[j] == '\n' {
				if b[j-1] != '\r' {
					return 0, &ProtocolError{"line not terminated by CRLF"}
				}
				return j + 1, nil
			}
		}
		if len(b)-i > MaxInline {
			return 0, &ProtocolError{"too long status line"}
		}
		return 0, errIncomplete
	case '$':
		l, p, err := parseLen(b, i+1)
		if err != nil {
			return 0, err
		}
		if l < 0 {
			return p, nil // null bulk
		}
		if l > MaxBulk {
			return 0, &ProtocolError{"invalid bulk length"}
		}
		end := p + int(l)
		if end+2 > len(b) {
			return 0, errIncomplete
		}
		if b[end] != '\r' || b[end+1] != '\n' {
			return 0, &ProtocolError{"bulk string not terminated by CRLF"}
		}
		return end + 2, nil
	case '*':
		if depth >= MaxDepth {
			return 0, &ProtocolError{"reply nested too deeply"}
		}
		n, p, err := parseLen(b, i+1)
		if err != nil {
			return 0, err
		}
		if n > MaxArgs {
			return 0, &ProtocolError{"invalid multibulk length"}
		}
		for k := int64(0); k < n; k++ {
			p, err = replyLen(b, p, depth+1)
			if err != nil {
				return 0, err
			}
		}
		return p, nil
	}
	return 0, &ProtocolError{fmt.Sprintf("unexpected reply type byte %q", b[i])}
}
