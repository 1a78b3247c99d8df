package httpproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// Upgrades (WebSocket and any other protocol an HTTP/1.1 request asks to switch to). The
// request goes upstream with its Upgrade and Connection: Upgrade; a 101 answer turns both
// connections into a tunnel that copies bytes each way until either side ends or nothing
// moves for the listener's idle timeout (httputil.ReverseProxy's handleUpgradeResponse,
// with an idle timeout). Any other answer is relayed as a normal response, its Upgrade
// dropped. The event loop hands every Upgrade to the goroutine path, so this is the one
// place tunnels run.
//
// Memory per tunnel is fixed whatever the frames: two copy buffers of 32 KiB (copyBufs) and
// the two connections' 4 KiB read buffers, 72 KiB in all; a frame larger than a buffer
// streams through in pieces.

// upgradeProtocol is what an HTTP/1.1 request asks to switch to, or "" for none. "h2c"
// (RFC 7540's cleartext upgrade, removed by RFC 9113) is not carried, as in Envoy: the
// request goes on as HTTP/1.1.
func upgradeProtocol(r *http.Request) string {
	if r.ProtoMajor != 1 || !httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") {
		return ""
	}
	up := strings.TrimSpace(r.Header.Get("Upgrade"))
	if up == "" || strings.EqualFold(up, "h2c") {
		return ""
	}
	return up
}

// tunnel serves a 101 answer: it writes the upstream's head to the caller and copies
// both ways until one side ends, then closes both. The downstream connection is closed
// by serveConn after the handler returns (w.close).
func (l *Listener) tunnel(w *h1Writer, resp *http.Response, up io.ReadWriteCloser) {
	l.upgrades.Add(1)
	l.tunnels.Add(1)
	defer l.tunnels.Add(-1)
	defer up.Close()
	w.wroteHeader, w.close, w.discard = true, true, true
	bw := w.bw
	bw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	h := resp.Header
	proto := h.Get("Upgrade") // the protocol switched to: hop-by-hop, but this hop's answer
	removeConnectionHeaders(h)
	for _, k := range hopHeaders {
		delete(h, k)
	}
	h.Set("Connection", "Upgrade")
	if proto != "" {
		h.Set("Upgrade", proto)
	}
	_ = h.Write(bw)
	bw.WriteString("\r\n")
	if bw.Flush() != nil {
		return
	}
	down, ok := rawConn(w.conn)
	if !ok {
		return
	}
	// What the caller sent after its request head is already in w.br.
	pre := append([]byte(nil), buffered(w.br)...)
	var dr io.Reader = down
	if len(pre) > 0 {
		dr = io.MultiReader(bytes.NewReader(pre), down)
	}
	idle := l.lim().IdleTimeout
	t := &tunnelState{idle: idle}
	t.last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	var once sync.Once
	stop := func() { // the first side to end stops the other
		once.Do(func() {
			t.stopped.Store(true)
			_ = down.SetReadDeadline(aLongTimeAgo)
			if d, ok := up.(interface{ SetReadDeadline(time.Time) error }); ok {
				_ = d.SetReadDeadline(aLongTimeAgo)
			}
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stop()
		t.pump(up, dr, down)
	}()
	t.pump(down, up, up)
	stop()
	wg.Wait()
}

// tunnelState is what both directions of a tunnel share.
type tunnelState struct {
	idle    time.Duration // 0: none
	last    atomic.Int64  // unix nanos of the last byte either way
	stopped atomic.Bool   // one side ended: the other stops at its next deadline
}

var aLongTimeAgo = time.Unix(1, 0)

// rawConn is the downstream socket under connio's reader, which the tunnel reads and writes
// from two goroutines directly.
func rawConn(c net.Conn) (net.Conn, bool) {
	cc, ok := c.(*connio.Conn)
	if !ok {
		return c, c != nil
	}
	if cc.Flush() != nil {
		return nil, false
	}
	return cc.Conn, true
}

// pump copies src to dst until src ends or fails, the other direction ends, or neither
// direction has moved a byte for the idle timeout. src's deadline is set through dl.
func (t *tunnelState) pump(dst io.Writer, src io.Reader, dl any) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	setDL, _ := dl.(interface{ SetReadDeadline(time.Time) error })
	for !t.stopped.Load() {
		if t.idle > 0 && setDL != nil {
			_ = setDL.SetReadDeadline(time.Unix(0, t.last.Load()).Add(t.idle))
		}
		n, err := src.Read(buf)
		if n > 0 {
			t.last.Store(time.Now().UnixNano())
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && t.idle > 0 && !t.stopped.Load() &&
				time.Since(time.Unix(0, t.last.Load())) < t.idle {
				continue // the other direction moved: not idle yet
			}
			return
		}
	}
}

// upgradeUpstream marks out as an Upgrade request to proto.
func upgradeUpstream(out *upstream.Request, proto string) {
	out.Header["Connection"] = []string{"Upgrade"}
	out.Header["Upgrade"] = []string{proto}
}
