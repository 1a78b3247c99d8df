package tlsrec

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Conn is a taken-over TLS connection as a net.Conn again: what the event loop hands to
// the goroutine path (a request it does not serve itself, a response it cannot frame). It
// embeds only net.Conn, so nothing can unwrap it to the socket and read ciphertext as
// plaintext.
type Conn struct {
	net.Conn
	st *State

	rmu   sync.Mutex
	raw   []byte // read, not yet a whole record
	plain []byte // decrypted, not yet returned
	rerr  error

	wmu     sync.Mutex
	pending []byte // sealed before the hand-over, not yet written
	wbuf    []byte
	closed  bool // close_notify sent
}

// NewConn continues st on c. raw is what was read from c but not yet decrypted, sealed
// what was encrypted but not yet written (it goes out before anything else); both are
// copied.
func NewConn(c net.Conn, st *State, raw, sealed []byte) *Conn {
	return &Conn{Conn: c, st: st, raw: append([]byte(nil), raw...), pending: append([]byte(nil), sealed...)}
}

// Read returns decrypted application data; io.EOF after the peer's close_notify or a
// clean end of the TCP stream between records.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.plain) == 0 {
		if c.rerr != nil {
			return 0, c.rerr
		}
		var used int
		var err error
		c.plain, used, err = c.st.Open(c.plain[:0], c.raw)
		c.raw = c.raw[:copy(c.raw, c.raw[used:])]
		if err != nil {
			c.rerr = err
			if errors.Is(err, ErrClosed) {
				c.rerr = io.EOF
			}
			continue
		}
		if len(c.plain) > 0 {
			break
		}
		if err := c.fill(); err != nil {
			c.rerr = err
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	return n, nil
}

// fill reads more ciphertext: at least one byte, at most the rest of one record.
func (c *Conn) fill() error {
	want := MaxRecord
	if n := RecordLen(c.raw); n > 0 {
		want = n
	}
	if cap(c.raw) < want {
		grown := make([]byte, len(c.raw), want)
		copy(grown, c.raw)
		c.raw = grown
	}
	n, err := c.Conn.Read(c.raw[len(c.raw):cap(c.raw)])
	c.raw = c.raw[:len(c.raw)+n]
	if n > 0 {
		return nil
	}
	if errors.Is(err, io.EOF) && len(c.raw) > 0 {
		return io.ErrUnexpectedEOF // cut inside a record
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Write encrypts p and writes it (after what was sealed before the hand-over).
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	c.wbuf = c.st.Seal(append(c.wbuf[:0], c.pending...), p)
	c.pending = nil
	if _, err := c.Conn.Write(c.wbuf); err != nil {
		return 0, err
	}
	if cap(c.wbuf) > 64<<10 {
		c.wbuf = nil
	}
	return len(p), nil
}

// closeNotify sends close_notify once, within a second (a peer that reads nothing must
// not hold Close up).
func (c *Conn) closeNotify() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := c.Conn.Write(c.st.SealClose(append(c.wbuf[:0], c.pending...)))
	c.pending = nil
	return err
}

// CloseWrite ends this side's stream with close_notify and half-closes the connection
// when it can (a TLS 1.3 peer may go on writing).
func (c *Conn) CloseWrite() error {
	if err := c.closeNotify(); err != nil {
		return err
	}
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close sends close_notify and closes the connection.
func (c *Conn) Close() error {
	_ = c.closeNotify()
	return c.Conn.Close()
}
