package connio

import "net"

// PrefixConn replays Pre, bytes already read from Conn (a sniffed first byte, a peeked
// TLS ClientHello), before Conn's own.
type PrefixConn struct {
	net.Conn
	Pre []byte
}

func (c *PrefixConn) Read(p []byte) (int, error) {
	if len(c.Pre) > 0 {
		n := copy(p, c.Pre)
		c.Pre = c.Pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection under the prefix when it can (a TCP connection);
// otherwise it does nothing.
func (c *PrefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
