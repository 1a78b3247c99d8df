package redisproxy

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

func (p *pending) localError(msg string) {
	p.isLoc = true
	p.local = resp.AppendError(p.local[:0], msg)
}

func (p *pending) localReply(b []byte) {
	p.isLoc = true
	p.local = append(p.local[:0], b...)
}

// dispatch decides what to do with one command: answer it locally, send it
// to one server, or split it over several. raw is the command as the client
// sent it, forwarded when nothing needs rewriting; it is nil for an inline
// command, which is always re-encoded as a RESP array.
func (cl *client) dispatch(p *pending, args [][]byte, raw []byte) {
	snap := cl.p.snap.Load()
	if snap.refuseAll != "" {
		cl.refusedCommand(p, args, snap.refuseAll) // authz.go
		return
	}
	cmd := lookup(args[0])
	if cmd == nil {
		p.cmd = unknownIdx
		p.localError(fmt.Sprintf("ERR unknown command '%s', with args beginning with: %s", printable(args[0]), argsPreview(args[1:])))
		return
	}
	p.cmd = cmd.idx
	// Redis's order (processCommand): unknown command, arity, then NOAUTH.
	if !cmd.arityOK(len(args)) {
		p.localError(fmt.Sprintf("ERR wrong number of arguments for '%s' command", cmd.name))
		return
	}
	if !cl.authed && len(snap.cfg.DownstreamPasswords) > 0 && cmd.name != "auth" && cmd.name != "hello" && cmd.name != "quit" {
		p.localError("NOAUTH Authentication required.")
		return
	}
	switch cmd.kind {
	case kindLocal:
		cl.local(p, cmd, args, snap)
	case kindUnsupported:
		cl.p.stats.unsupported.Add(1)
		p.localError(fmt.Sprintf("ERR command '%s' is not supported by the Weft Redis proxy: %s", cmd.name, cmd.reason))
	case kindKeyed:
		cl.keys = cmd.keyIndexes(cl.keys[:0], len(args))
		cl.keyed(p, cmd.name, args, raw, cl.keys, snap)
	case kindEval:
		n, err := strconv.Atoi(string(args[2]))
		if err != nil || n < 0 {
			p.localError("ERR value is not an integer or out of range")
			return
		}
		if n > len(args)-3 {
			p.localError("ERR Number of keys can't be greater than number of args")
			return
		}
		if n == 0 {
			// A keyless script has no server of its own; running it on an
			// arbitrary shard would surprise, so it is refused (as twemproxy).
			p.localError(fmt.Sprintf("ERR %s with numkeys 0 cannot be routed by the sharding proxy: pass the keys the script touches so it runs on their server", strings.ToUpper(cmd.name)))
			return
		}
		cl.keys = cl.keys[:0]
		for i := 3; i < 3+n; i++ {
			cl.keys = append(cl.keys, i)
		}
		cl.keyed(p, cmd.name, args, raw, cl.keys, snap)
	case kindSplitSum, kindSplitMGet, kindSplitMSet:
		cl.split(p, cmd, args, raw, snap)
	}
}

// target resolves a key to its server, or returns an error reply text.
func target(snap *snapshot, key []byte) (*upstream, []byte, string) {
	pl, k := snap.resolve(key)
	if pl == nil {
		return nil, nil, "ERR no server pool for this key: add a catch-all route or a route whose prefix matches it"
	}
	if len(pl.servers) == 0 {
		return nil, nil, fmt.Sprintf("ERR pool %s has no servers yet: its Service has no ready endpoints", pl.name)
	}
	i := pl.ring.Load().Pick(k)
	if i < 0 {
		return nil, nil, fmt.Sprintf("ERR every server of pool %s is down; retry when one recovers", pl.name)
	}
	u := pl.servers[i]
	if u.down.Load() && pl.cfg.EjectMode == EjectFail {
		return nil, nil, fmt.Sprintf("ERR server %s, which owns this key, is down; keys are not remapped (ejectMode fail), retry when it recovers", u.label())
	}
	return u, k, ""
}

// keyed sends a command whose keys must all live on one server.
func (cl *client) keyed(p *pending, name string, args [][]byte, raw []byte, keys []int, snap *snapshot) {
	var up *upstream
	rewrite := false
	for _, ki := range keys {
		u, k, msg := target(snap, args[ki])
		if msg != "" {
			p.localError(msg)
			return
		}
		if up != nil && u != up {
			p.localError(fmt.Sprintf("CROSSSLOT Keys in request don't hash to the same server (%s and %s); give them a common hash tag such as {user1}", up.name, u.name))
			return
		}
		up = u
		if len(k) != len(args[ki]) {
			args[ki] = k
			rewrite = true
		}
	}
	if up == nil {
		p.localError(fmt.Sprintf("ERR '%s' names no key, so the proxy cannot choose a server", name))
		return
	}
	r := &p.req
	if rewrite || raw == nil { // nil: inline, whose line the server would parse again
		r.buf = resp.AppendCommand(r.buf[:0], args...)
		r.cmd = r.buf
	} else {
		r.cmd = raw
	}
	cl.send(r, up)
}

// send queues r on its server connection.
func (cl *client) send(r *request, up *upstream) {
	cl.takeSlot() // freed by r.finish, however r ends
	for attempt := 0; attempt < 2; attempt++ {
		s, msg := up.get(cl.id)
		if s == nil {
			r.fail(msg)
			return
		}
		if s.enqueue(r) {
			r.cmd = nil
			for _, d := range cl.dirty {
				if d == s {
					return
				}
			}
			cl.dirty = append(cl.dirty, s)
			return
		}
	}
	r.fail(fmt.Sprintf("ERR lost connection to server %s; retry", up.label()))
}

// split sends one batch per server for MGET, MSET, DEL, EXISTS, TOUCH and
// UNLINK, and remembers how to merge the replies in key order.
func (cl *client) split(p *pending, cmd *command, args [][]byte, raw []byte, snap *snapshot) {
	step := cmd.step
	if cmd.kind == kindSplitMSet && (len(args)-1)%2 != 0 {
		p.localError(fmt.Sprintf("ERR wrong number of arguments for '%s' command", cmd.name))
		return
	}
	var perKey [16]*upstream
	keyTargets := perKey[:0]
	for i := 1; i < len(args); i += step {
		u, k, msg := target(snap, args[i])
		if msg != "" {
			p.localError(msg)
			return
		}
		args[i] = k
		keyTargets = append(keyTargets, u)
	}
	p.merge = cmd.kind
	var ups []*upstream
	p.pos, ups = planFragments(p.pos, keyTargets)
	for f, u := range ups {
		r := cl.getRequest()
		r.buf = appendFragment(r.buf[:0], args, step, p.pos, f)
		r.cmd = r.buf
		p.frags = append(p.frags, r)
		cl.send(r, u)
	}
	_ = raw
}

// planFragments groups keys by target: pos gets, for each key, the index of
// its fragment; targets lists fragments in order of first appearance.
func planFragments[T comparable](pos []int32, keyTargets []T) ([]int32, []T) {
	var targets []T
	for _, t := range keyTargets {
		f := -1
		for j, x := range targets {
			if x == t {
				f = j
				break
			}
		}
		if f < 0 {
			f = len(targets)
			targets = append(targets, t)
		}
		pos = append(pos, int32(f))
	}
	return pos, targets
}

// appendFragment builds fragment f's command: the original command name and,
// in key order, each key of the fragment with its step-1 following arguments.
func appendFragment(dst []byte, args [][]byte, step int, pos []int32, f int) []byte {
	n := 0
	for _, q := range pos {
		if int(q) == f {
			n++
		}
	}
	dst = resp.AppendArrayHeader(dst, 1+n*step)
	dst = resp.AppendBulk(dst, args[0])
	for ki, q := range pos {
		if int(q) == f {
			for s := 0; s < step; s++ {
				dst = resp.AppendBulk(dst, args[1+ki*step+s])
			}
		}
	}
	return dst
}

// mergeReplies builds the client's reply from per-server fragments. Any
// fragment error becomes the reply (the command partly ran, as in twemproxy).
func mergeReplies(dst []byte, p *pending) []byte {
	for _, r := range p.frags {
		if resp.IsError(r.reply) {
			return append(dst, r.reply...)
		}
	}
	switch p.merge {
	case kindSplitSum:
		var sum int64
		for _, r := range p.frags {
			n, err := resp.ReplyInt(r.reply)
			if err != nil {
				return resp.AppendError(dst, "ERR a server sent a non-integer reply to a counting command")
			}
			sum += n
		}
		return resp.AppendInt(dst, sum)
	case kindSplitMSet:
		for _, r := range p.frags {
			if !bytes.Equal(r.reply, []byte("+OK\r\n")) {
				return resp.AppendError(dst, "ERR a server did not acknowledge its part of MSET")
			}
		}
		return resp.AppendStatus(dst, "OK")
	}
	// MGET: walk every fragment's array in step with the key order.
	offs := make([]int, len(p.frags))
	for f, r := range p.frags {
		if len(r.reply) == 0 || r.reply[0] != '*' {
			return resp.AppendError(dst, "ERR a server sent a non-array reply to MGET")
		}
		offs[f] = bytes.IndexByte(r.reply, '\n') + 1
	}
	dst = resp.AppendArrayHeader(dst, len(p.pos))
	for _, f := range p.pos {
		r := p.frags[f]
		end, err := resp.ElementEnd(r.reply, offs[f])
		if err != nil {
			return resp.AppendError(dst[:0], "ERR a server sent a malformed reply to MGET")
		}
		dst = append(dst, r.reply[offs[f]:end]...)
		offs[f] = end
	}
	return dst
}

// local answers the commands the proxy handles itself.
func (cl *client) local(p *pending, cmd *command, args [][]byte, snap *snapshot) {
	cfg := &snap.cfg
	switch cmd.name {
	case "ping":
		switch len(args) {
		case 1:
			p.localReply([]byte("+PONG\r\n"))
		case 2:
			p.isLoc, p.local = true, resp.AppendBulk(p.local[:0], args[1])
		default:
			p.localError("ERR wrong number of arguments for 'ping' command")
		}
	case "echo":
		p.isLoc, p.local = true, resp.AppendBulk(p.local[:0], args[1])
	case "quit":
		p.quit = true
		p.localReply([]byte("+OK\r\n"))
	case "select":
		if string(args[1]) == "0" {
			p.localReply([]byte("+OK\r\n"))
		} else {
			p.localError("ERR SELECT is not supported for databases other than 0: the proxy serves database 0 only")
		}
	case "auth":
		var user, pass []byte
		switch len(args) {
		case 2:
			pass = args[1]
		case 3:
			user, pass = args[1], args[2]
		default:
			p.localError("ERR syntax error")
			return
		}
		cl.auth(p, cfg, user, pass, "+OK\r\n")
	case "hello":
		cl.hello(p, cfg, args)
	}
}

// auth checks AUTH or HELLO's AUTH option (user is nil for the
// one-argument form) and answers as Redis 7 does.
func (cl *client) auth(p *pending, cfg *Config, user, pass []byte, ok string) bool {
	if len(cfg.DownstreamPasswords) == 0 {
		// No password: Redis's default user is "nopass", so any password is
		// right for it, but the legacy form is reported as a mistake.
		switch {
		case user == nil:
			p.localError("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
			return false
		case string(user) != "default":
			cl.p.stats.authFailures.Add(1)
			p.localError("WRONGPASS invalid username-password pair or user is disabled.")
			return false
		}
	} else if !checkAuth(cfg, user, pass) {
		cl.p.stats.authFailures.Add(1)
		p.localError("WRONGPASS invalid username-password pair or user is disabled.")
		return false
	}
	cl.authed = true
	if ok != "" {
		p.localReply([]byte(ok))
	}
	return true
}

// hello supports protocol 2 only (the proxy speaks RESP2), with optional
// AUTH and SETNAME.
func (cl *client) hello(p *pending, cfg *Config, args [][]byte) {
	if len(args) >= 2 {
		v, err := strconv.Atoi(string(args[1]))
		if err != nil {
			p.localError("ERR Protocol version is not an integer or out of range")
			return
		}
		if v != 2 {
			p.localError("NOPROTO sorry, this protocol version is not supported.")
			return
		}
	}
	for i := 2; i < len(args); i++ {
		switch string(bytes.ToLower(args[i])) {
		case "auth":
			if i+2 >= len(args) {
				p.localError(fmt.Sprintf("ERR Syntax error in HELLO option '%s'", printable(args[i])))
				return
			}
			if !cl.auth(p, cfg, args[i+1], args[i+2], "") {
				return
			}
			i += 2
		case "setname":
			if i+1 >= len(args) {
				p.localError(fmt.Sprintf("ERR Syntax error in HELLO option '%s'", printable(args[i])))
				return
			}
			i++
		default:
			p.localError(fmt.Sprintf("ERR Syntax error in HELLO option '%s'", printable(args[i])))
			return
		}
	}
	if !cl.authed && len(cfg.DownstreamPasswords) > 0 {
		p.localError("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
		return
	}
	b := resp.AppendArrayHeader(p.local[:0], 14)
	for _, kv := range [][2]string{{"server", "weft-redis-proxy"}, {"version", "7.0.0"}} {
		b = resp.AppendBulk(b, []byte(kv[0]))
		b = resp.AppendBulk(b, []byte(kv[1]))
	}
	b = resp.AppendBulk(b, []byte("proto"))
	b = resp.AppendInt(b, 2)
	b = resp.AppendBulk(b, []byte("id"))
	b = resp.AppendInt(b, int64(cl.id))
	for _, kv := range [][2]string{{"mode", "standalone"}, {"role", "master"}} {
		b = resp.AppendBulk(b, []byte(kv[0]))
		b = resp.AppendBulk(b, []byte(kv[1]))
	}
	b = resp.AppendBulk(b, []byte("modules"))
	b = resp.AppendArrayHeader(b, 0)
	p.isLoc, p.local = true, b
}

func printable(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return string(bytes.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, b))
}

func argsPreview(args [][]byte) string {
	var out []byte
	for i, a := range args {
		if i == 3 {
			break
		}
		out = append(out, '\'')
		out = append(out, printable(a)...)
		out = append(out, '\'', ' ')
	}
	return string(out)
}
