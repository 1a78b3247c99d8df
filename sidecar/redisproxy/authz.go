package redisproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/connio"
)

// Authorization of a pool by MeshPolicies that target it (docs/authorization.md, "Redis
// pools"). Two cases, told apart by config.RedisAuthz.Judged:
//
//   - A sidecar-local pool the control plane refused for this sidecar's own identity: the
//     config has no pools, and every command but QUIT is answered with -NOPERM naming the
//     policy, on every connection, for as long as that config is in force.
//   - A standalone proxy: each connection is judged once, when it is accepted, on its
//     mutual-TLS peer (no identity when it came in plaintext). A refused connection gets
//     -NOPERM for its first command and is closed; nothing it sent is parsed or forwarded.

// TLSSource serves the proxy's side of mutual TLS: identity.Manager's ServerConfig (the
// workload certificate, a required client certificate verified against the mesh's bundle).
type TLSSource interface {
	ServerConfig() *tls.Config
}

// WithTLS makes the proxy accept mutual TLS on its listeners next to plaintext: a
// connection whose first byte starts a TLS handshake (0x16) is served over TLS with ALPN
// weft-tcp (or none), and its verified peer is what MeshPolicies judge.
func WithTLS(src TLSSource) Option { return func(p *Proxy) { p.tlsSrc = src } }

// Bounds of a connection before it is served.
var (
	// handshakeTimeout bounds reading the first byte and the TLS handshake (as the inbound
	// HTTP listener's 10 s); a variable so tests can shorten it.
	handshakeTimeout = 10 * time.Second
)

const (
	// refuseReadTimeout bounds waiting for a refused client's first command.
	refuseReadTimeout = 10 * time.Second
	// refuseDrain bounds what is read and dropped from a refused client after the refusal,
	// so its kernel does not reset the connection before it reads the reply: 1 MiB or 2 s.
	refuseDrain        = 1 << 20
	refuseDrainTimeout = 2 * time.Second
	// maxAuthzSeries bounds the label sets of weft_redis_authz_connections_total.
	maxAuthzSeries = 256
)

// tlsRecordHandshake is the first byte of a TLS ClientHello record.
const tlsRecordHandshake = 0x16

// sniff serves a connection as TLS or plaintext by its first byte, on its own goroutine so
// a slow or stalled client never holds up the accept loop. Waiting for the first byte has
// no bound (an idle plaintext client, such as a pool's spare connection, is served as
// before); once a handshake has started it must finish within handshakeTimeout.
func (p *Proxy) sniff(c net.Conn) {
	if !p.track(c) {
		c.Close()
		return
	}
	first, conn, err := peekByte(c)
	if err != nil {
		p.untrack(c)
		c.Close()
		return
	}
	if first != tlsRecordHandshake {
		p.untrack(c)
		p.startClient(conn, "")
		return
	}
	cfg := p.tlsSrc.ServerConfig().Clone()
	cfg.NextProtos = []string{contract.ALPNTCP}
	tc := tls.Server(conn, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	p.untrack(c)
	if err != nil {
		p.stats.handshakeErrors.Add(1)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	peer := ""
	if len(cs.PeerCertificates) > 0 && len(cs.PeerCertificates[0].URIs) == 1 {
		if id, err := contract.ParseSPIFFEID(cs.PeerCertificates[0].URIs[0]); err == nil {
			peer = id.String()
		}
	}
	if peer == "" { // ServerConfig verified the chain; a certificate without one SPIFFE ID is no identity
		p.stats.handshakeErrors.Add(1)
		c.Close()
		return
	}
	p.startClient(tc, peer)
}

// peekByte returns c's first byte and the connection to serve: c itself when the byte
// could be peeked (MSG_PEEK: a plaintext client keeps the proxy's zero-copy socket path),
// else c with the byte replayed.
func peekByte(c net.Conn) (byte, net.Conn, error) {
	var b [1]byte
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			var n int
			var rerr error
			err := raw.Read(func(fd uintptr) bool {
				n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
				return rerr != syscall.EAGAIN
			})
			if err == nil && rerr == nil && n == 1 {
				return b[0], c, nil
			}
			if err == nil && rerr == nil && n == 0 {
				return 0, nil, io.EOF
			}
			if err != nil {
				return 0, nil, err
			}
			if rerr != syscall.EINTR {
				return 0, nil, rerr
			}
		}
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, nil, err
	}
	return b[0], &connio.PrefixConn{Conn: c, Pre: b[:]}, nil
}

// track records a connection that is being sniffed or handshaken, so Shutdown closes it;
// false when the proxy is shut down.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	if p.sniffing == nil {
		p.sniffing = map[net.Conn]struct{}{}
	}
	p.sniffing[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.sniffing, c)
	p.mu.Unlock()
}

// closeSniffing closes the connections not yet served; mu is held.
func (p *Proxy) closeSniffing() {
	for c := range p.sniffing {
		c.Close()
	}
}

// refusal is the -NOPERM text for a client a rule refused.
func refusal(a *config.RedisAuthz, who, policy string, deny bool) string {
	why := "no ALLOW rule admits it"
	if deny {
		why = "its DENY rule matches"
	}
	return "NOPERM " + who + " may not use RedisProxy " + a.Pool + ": denied by MeshPolicy " + policy + " (" + why + ")"
}

// whoIs names a caller in a refusal.
func whoIs(judged bool, principal string) string {
	switch {
	case principal != "" && judged:
		return "this workload (" + principal + ")"
	case principal != "":
		return "this caller (" + principal + ")"
	case judged:
		return "this workload (no verified identity)"
	}
	return "a caller without a mesh identity (plaintext connection)"
}

// judgedRefusal is the refusal of every command when the control plane refused this
// sidecar's identity for the pool; "" otherwise.
func judgedRefusal(a *config.RedisAuthz) string {
	if !a.Refuses() {
		return ""
	}
	_, policy, deny := a.Decide(a.Caller)
	return refusal(a, whoIs(true, a.Caller), policy, deny)
}

// admit judges a new connection c by its verified peer ("" for none) and counts the
// decision; it returns the refusal text, "" when the connection may use the pool. A
// plaintext connection from loopback of a sidecar-local pool (Caller set) comes from the
// pod itself and is judged as the pod's identity.
func (p *Proxy) admit(s *snapshot, c net.Conn, peer string) string {
	a := s.cfg.Authz
	if a == nil {
		return ""
	}
	if s.refuseAll != "" {
		_, policy, _ := a.Decide(a.Caller)
		p.stats.authz.add(a.Pool, "deny", policy)
		return ""
	}
	if a.Judged {
		return "" // the control plane admitted this sidecar (it sends no filter then, but be exact)
	}
	if peer == "" && a.Caller != "" && fromLoopback(c) {
		peer = a.Caller
	}
	ok, policy, deny := a.Decide(peer)
	if ok {
		p.stats.authz.add(a.Pool, "allow", policy)
		return ""
	}
	p.stats.authz.add(a.Pool, "deny", policy)
	return refusal(a, whoIs(false, peer), policy, deny)
}

// fromLoopback reports whether c's peer is a loopback address (the pod's own containers).
func fromLoopback(c net.Conn) bool {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// refuse answers a refused connection's first command with msg and closes it, without
// parsing what it sent (a huge or malformed first command costs one read buffer).
func refuse(c net.Conn, msg string) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(refuseReadTimeout))
	buf := make([]byte, 4096)
	if _, err := c.Read(buf); err != nil {
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(refuseReadTimeout))
	if _, err := c.Write([]byte("-" + msg + "\r\n")); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	// Read what the client still sends (bounded) so closing does not reset the connection
	// before the client has read the refusal.
	_ = c.SetReadDeadline(time.Now().Add(refuseDrainTimeout))
	_, _ = io.CopyN(io.Discard, c, refuseDrain)
}

// refusedCommand answers one command of a client while the config refuses every one.
func (cl *client) refusedCommand(p *pending, args [][]byte, msg string) {
	if bytes.EqualFold(args[0], []byte("quit")) {
		p.cmd = lookup(args[0]).idx
		p.localReply([]byte("+OK\r\n"))
		p.quit = true
		return
	}
	p.cmd = unknownIdx
	if cmd := lookup(args[0]); cmd != nil {
		p.cmd = cmd.idx
	}
	p.localError(msg)
}

// authzCounts counts connections by pool, decision and policy, with at most
// maxAuthzSeries label sets (then policy="overflow").
type authzCounts struct {
	mu sync.Mutex
	n  map[[3]string]uint64
}

func (a *authzCounts) add(pool, decision, policy string) {
	if policy == "" {
		policy = "none"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[[3]string]uint64{}
	}
	k := [3]string{pool, decision, policy}
	if _, ok := a.n[k]; !ok && len(a.n) >= maxAuthzSeries {
		k[2] = "overflow"
	}
	a.n[k]++
}

// write appends weft_redis_authz_connections_total, sorted.
func (a *authzCounts) write(b []byte) []byte {
	a.mu.Lock()
	keys := make([][3]string, 0, len(a.n))
	for k := range a.n {
		keys = append(keys, k)
	}
	vals := make(map[[3]string]uint64, len(a.n))
	for k, v := range a.n {
		vals[k] = v
	}
	a.mu.Unlock()
	sort.Slice(keys, func(i, j int) bool { return strings.Join(keys[i][:], "\x00") < strings.Join(keys[j][:], "\x00") })
	b = append(b, "# HELP weft_redis_authz_connections_total Client connections judged by MeshPolicies that target the pool, by pool, decision and the policy that decided.\n# TYPE weft_redis_authz_connections_total counter\n"...)
	for _, k := range keys {
		b = fmt.Appendf(b, "weft_redis_authz_connections_total{pool=%q,decision=%q,policy=%q} %d\n", k[0], k[1], k[2], vals[k])
	}
	return b
}
