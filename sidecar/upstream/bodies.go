package upstream

// Bodies the upstream client hands net/http or its callers: a request body gated on its
// HTTP/2 connection's write queue, a response body that gives its stream slot back, and an
// upgraded HTTP/1.1 connection.

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/weftmesh/weft/sidecar/connio"
)

// gatedBody is a request body that waits for room in its connection's write queue before
// each read and reads at most FlushBehindChunk at a time: the HTTP/2 client's Write of
// what it read then never waits for the socket while it holds the connection's write lock
// (FlushBehind.WithoutWaiting), and the connection's queue holds at most
// FlushBehindLimit + FlushBehindChunk per uploading stream.
type gatedBody struct {
	rc     io.ReadCloser
	w      *FlushBehind
	ctx    context.Context
	closed atomic.Bool // Close: a read waiting for room ends
}

func newGatedBody(ctx context.Context, rc io.ReadCloser, w *FlushBehind) *gatedBody {
	return &gatedBody{rc: rc, w: w, ctx: ctx}
}

func (b *gatedBody) Read(p []byte) (int, error) {
	if err := b.w.waitRoom(b.ctx, &b.closed); err != nil {
		return 0, err
	}
	if len(p) > FlushBehindChunk {
		p = p[:FlushBehindChunk]
	}
	return b.rc.Read(p)
}

// Close ends a Read waiting for room (the client closes the body when the stream ends
// before it has all been sent) and closes the body.
func (b *gatedBody) Close() error {
	b.closed.Store(true)
	b.w.wakeWaiters()
	return b.rc.Close()
}

// h2body gives the stream's slot back when the body ends or is closed.
type h2body struct {
	rc   io.ReadCloser
	end  func()
	once sync.Once
}

func (b *h2body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		b.once.Do(b.end)
	}
	return n, err
}

func (b *h2body) Close() error {
	err := b.rc.Close()
	b.once.Do(b.end)
	return err
}

// upgraded is the body of a 101 Switching Protocols response on HTTP/1.1: the upstream
// connection's socket, what was read past the response head first (connio.PrefixConn: its
// Read, Write, SetReadDeadline for the tunnel's idle timeout and CloseWrite to half-close
// when the caller has finished sending). Close closes the pooled connection around it. It
// is an io.ReadWriteCloser, as net/http.Transport makes it.
type upgraded struct {
	connio.PrefixConn // the socket, read and written from two goroutines
	conn              net.Conn
}

func (u *upgraded) Close() error { return u.conn.Close() }

// maxRefusedRetries bounds how often one request refused unprocessed (REFUSED_STREAM) is
// sent again.
const maxRefusedRetries = 4
