// Command hoplat reads a loopback packet capture (tcpdump -s 0 -w, Ethernet framing as
// Linux's lo has) of HTTP/2 traffic through proxies and reports, per proxy and direction,
// how long each HEADERS frame spent inside the proxy: from the packet that brought it
// (stamped when the peer wrote it) to the packet that took it on (stamped when the proxy
// wrote it) — the proxy's wake-up, read, work and write, nothing of the peers.
//
//	hoplat -hop sidecar,28201,28206 -hop haproxy,28501,28506,39400 cap.pcap
//
// A hop is name,listen-port,upstream-port[,upstream-local-port]: the last picks the proxy's
// own upstream connection when other processes call the same upstream port. Upstream port
// 0 names a server rather than a proxy (the backend): only its whole calls are timed, and
// the fourth field, if given, is the calling connection's port.
//
// Frames are matched by stream: a proxy carrying one caller connection over one upstream
// connection opens upstream streams in the order the caller's arrive, so caller stream X
// is upstream stream X-offset for one offset per connection pair, found as the one most
// request frames agree with (sent on within 2 ms of arriving). A request's HEADERS is
// matched with the upstream stream's HEADERS, and a response's HEADERS and trailers with
// the caller stream's, in order. Packets the capture dropped lose their own calls only.
// A third line per hop times whole calls: from the request's HEADERS arriving to the
// response's trailers leaving, so the proxy and everything behind it.
//
// With -calls (hack/bench/grpc rate -log) and -client target,port[,local-port], each
// measured call of that target is split into the load generator's own time before its
// request reached the wire, the wire's (the proxies and backend), and its own time after
// the trailers arrived. Call i is stream 201+2i of the target's connection: the 100
// warm-up calls take streams 1-199 and grpc-go numbers streams in the order calls start.
// Every packet must start a frame (true of small gRPC calls); others are skipped.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

type hop struct {
	name             string
	listen, up, upSP uint16

	reqIn   map[streamKey]time.Duration   // a caller stream's first HEADERS
	reqOut  []frameAt                     // HEADERS sent upstream, first per stream
	respIn  map[streamKey][]time.Duration // HEADERS the upstream sent on a stream, in order
	respOut []frameAt                     // HEADERS sent to the caller
}

// streamKey names a stream by the TCP port of the connection's far end (the caller's, or
// the proxy's own on its upstream connection) and its stream ID.
type streamKey struct {
	port   uint16
	stream uint32
}

type frameAt struct {
	streamKey
	t time.Duration
}

type hopList []*hop

// ports parses a flag's port fields into n ports, the ones not given 0.
func ports(fields []string, n int) ([]uint16, error) {
	p := make([]uint16, n)
	for i, f := range fields {
		v, err := strconv.ParseUint(f, 10, 16)
		if err != nil {
			return nil, err
		}
		p[i] = uint16(v)
	}
	return p, nil
}

func (h *hopList) String() string { return "" }
func (h *hopList) Set(v string) error {
	f := strings.Split(v, ",")
	if len(f) < 3 || len(f) > 4 {
		return errors.New("want name,listen-port,upstream-port[,upstream-local-port]")
	}
	p, err := ports(f[1:], 3)
	if err != nil {
		return err
	}
	*h = append(*h, &hop{name: f[0], listen: p[0], up: p[1], upSP: p[2],
		reqIn: map[streamKey]time.Duration{}, respIn: map[streamKey][]time.Duration{}})
	return nil
}

func main() {
	var hops hopList
	flag.Var(&hops, "hop", "name,listen-port,upstream-port[,upstream-local-port] (repeatable)")
	var clients clientList
	flag.Var(&clients, "client", "target-index,port[,local-port]: the load generator's connection for -calls' target (repeatable)")
	calls := flag.String("calls", "", "the load generator's call log (hack/bench/grpc rate -log)")
	flag.Parse()
	if flag.NArg() != 1 || len(hops) == 0 {
		fmt.Fprintln(os.Stderr, "usage: hoplat -hop name,listen,upstream[,upstream-local] ... capture.pcap")
		os.Exit(2)
	}
	for _, c := range clients {
		hops = append(hops, c.wire)
	}
	if err := run(flag.Arg(0), hops); err != nil {
		fmt.Fprintln(os.Stderr, "hoplat:", err)
		os.Exit(1)
	}
	for _, h := range hops {
		if h.name != "" {
			h.report()
		}
	}
	if *calls != "" {
		if err := splitCalls(*calls, clients); err != nil {
			fmt.Fprintln(os.Stderr, "hoplat:", err)
			os.Exit(1)
		}
	}
}

func run(path string, hops []*hop) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var gh [24]byte
	if _, err := io.ReadFull(f, gh[:]); err != nil {
		return err
	}
	var order binary.ByteOrder = binary.LittleEndian
	nano := false
	switch binary.LittleEndian.Uint32(gh[:4]) {
	case 0xa1b2c3d4:
	case 0xa1b23c4d:
		nano = true
	case 0xd4c3b2a1:
		order = binary.BigEndian
	case 0x4d3cb2a1:
		order, nano = binary.BigEndian, true
	default:
		return errors.New("not a pcap file")
	}
	if lt := order.Uint32(gh[20:24]); lt != 1 {
		return fmt.Errorf("link type %d, want 1 (Ethernet, as Linux's lo)", lt)
	}
	var rh [16]byte
	buf := make([]byte, 1<<16)
	for {
		if _, err := io.ReadFull(f, rh[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		sec, frac := order.Uint32(rh[0:4]), order.Uint32(rh[4:8])
		incl := order.Uint32(rh[8:12])
		if int(incl) > len(buf) {
			return errors.New("record larger than 64 KiB")
		}
		if _, err := io.ReadFull(f, buf[:incl]); err != nil {
			return err
		}
		ts := time.Duration(sec) * time.Second
		if nano {
			ts += time.Duration(frac)
		} else {
			ts += time.Duration(frac) * time.Microsecond
		}
		packet(buf[:incl], ts, hops)
	}
}

// packet finds the TCP ports and the HEADERS frames of one captured packet.
func packet(p []byte, ts time.Duration, hops []*hop) {
	if len(p) < 14+20 || binary.BigEndian.Uint16(p[12:14]) != 0x0800 {
		return
	}
	ip := p[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != 6 || len(ip) < ihl+20 {
		return
	}
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	tcp := ip[ihl:]
	sp, dp := binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4])
	off := int(tcp[12]>>4) * 4
	if total-ihl-off <= 0 || len(tcp) < off {
		return
	}
	streams := headersStreams(tcp[off:min(len(tcp), total-ihl)])
	for _, h := range hops {
		for _, s := range streams {
			switch {
			case dp == h.listen && (h.up != 0 || h.upSP == 0 || sp == h.upSP): // from a caller
				k := streamKey{sp, s}
				if _, seen := h.reqIn[k]; !seen {
					h.reqIn[k] = ts
				}
			case dp == h.up && (h.upSP == 0 || sp == h.upSP): // to the upstream
				h.reqOut = append(h.reqOut, frameAt{streamKey{sp, s}, ts})
			case sp == h.up && (h.upSP == 0 || dp == h.upSP): // from the upstream
				k := streamKey{dp, s}
				h.respIn[k] = append(h.respIn[k], ts)
			case sp == h.listen && (h.up != 0 || h.upSP == 0 || dp == h.upSP): // to a caller
				h.respOut = append(h.respOut, frameAt{streamKey{dp, s}, ts})
			}
		}
	}
}

// headersStreams returns the stream of every HEADERS frame in a payload that starts with
// a frame header; nil when it does not look like one (the connection preface, a packet
// starting mid-frame).
func headersStreams(b []byte) []uint32 {
	var out []uint32
	for pos := 0; pos+9 <= len(b); {
		length := int(b[pos])<<16 | int(b[pos+1])<<8 | int(b[pos+2])
		typ := b[pos+3]
		if typ > 9 {
			return nil
		}
		if typ == 1 {
			out = append(out, binary.BigEndian.Uint32(b[pos+5:pos+9])&0x7fffffff)
		}
		pos += 9 + length
	}
	return out
}

// pairing is the stream-ID offset between one caller connection and one upstream one.
type pairing struct {
	callerPort uint16
	offset     int64
}

// pairings finds, per upstream connection, the caller connection and stream offset that
// most requests agree with.
func (h *hop) pairings() map[uint16]pairing {
	votes := map[uint16]map[pairing]int{}
	// The first few thousand requests settle it; voting with all of them would cost the
	// square of a long capture.
	for _, o := range h.reqOut[:min(len(h.reqOut), 2000)] {
		for k, t := range h.reqIn {
			if d := o.t - t; d >= 0 && d <= 2*time.Millisecond {
				if votes[o.port] == nil {
					votes[o.port] = map[pairing]int{}
				}
				votes[o.port][pairing{k.port, int64(k.stream) - int64(o.stream)}]++
			}
		}
	}
	best := map[uint16]pairing{}
	for up, v := range votes {
		n := 0
		for p, c := range v {
			if c > n || (c == n && p.offset < best[up].offset) {
				best[up], n = p, c
			}
		}
	}
	return best
}

func (h *hop) report() {
	pair := h.pairings()
	byCaller := map[uint16]struct {
		up  uint16
		off int64
	}{}
	for up, p := range pair {
		byCaller[p.callerPort] = struct {
			up  uint16
			off int64
		}{up, p.offset}
	}
	var req, resp []time.Duration
	for _, o := range h.reqOut {
		p, ok := pair[o.port]
		if !ok {
			continue
		}
		if t, ok := h.reqIn[streamKey{p.callerPort, uint32(int64(o.stream) + p.offset)}]; ok && o.t >= t {
			req = append(req, o.t-t)
		}
	}
	sent := map[streamKey]int{} // HEADERS sent to the caller so far, per stream
	for _, o := range h.respOut {
		i := sent[o.streamKey]
		sent[o.streamKey]++
		c, ok := byCaller[o.port]
		if !ok {
			continue
		}
		in := h.respIn[streamKey{c.up, uint32(int64(o.stream) - c.off)}]
		if i < len(in) && o.t >= in[i] {
			resp = append(resp, o.t-in[i])
		}
	}
	if h.up != 0 {
		report(h.name+" request ", req, len(h.reqOut))
		report(h.name+" response", resp, len(h.respOut))
	}
	// From a request's HEADERS arriving to the response's last HEADERS (the trailers)
	// leaving for the caller: this proxy and everything behind it.
	var whole []time.Duration
	last := map[streamKey]time.Duration{}
	for _, o := range h.respOut {
		last[o.streamKey] = o.t
	}
	for k, t := range h.reqIn {
		if e, ok := last[k]; ok && sent[k] >= 2 && e >= t {
			whole = append(whole, e-t)
		}
	}
	report(h.name+" call    ", whole, len(h.reqIn))
}

// report prints the percentiles of the times frames spent in the proxy, and how many of
// the frames it sent were matched.
func report(label string, d []time.Duration, sent int) {
	if len(d) == 0 {
		fmt.Printf("%s: none of %d frames matched\n", label, sent)
		return
	}
	slices.Sort(d)
	p := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))].Nanoseconds()) / 1e3 }
	fmt.Printf("%s: n=%d of %d p50=%.0fus p90=%.0fus p99=%.0fus p99.9=%.0fus max=%.0fus\n",
		label, len(d), sent, p(0.5), p(0.9), p(0.99), p(0.999), p(1))
}

// client is one target's connection from the load generator, read off the capture as a
// hop with no upstream side.
type client struct {
	target int
	wire   *hop
	local  uint16 // the load generator's port, when the proxy port has other callers
}

type clientList []*client

func (c *clientList) String() string { return "" }
func (c *clientList) Set(v string) error {
	f := strings.Split(v, ",")
	if len(f) < 2 || len(f) > 3 {
		return errors.New("want target-index,port[,local-port]")
	}
	k, err := strconv.Atoi(f[0])
	if err != nil {
		return err
	}
	p, err := ports(f[1:], 2)
	if err != nil {
		return err
	}
	*c = append(*c, &client{target: k, local: p[1], wire: &hop{listen: p[0],
		reqIn: map[streamKey]time.Duration{}, respIn: map[streamKey][]time.Duration{}}})
	return nil
}

// splitCalls joins the call log with the capture: for each client, per measured call, the
// time before the request reached the wire, on the wire, and after the trailers arrived.
func splitCalls(logPath string, clients []*client) error {
	f, err := os.Open(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	type call struct{ sched, end time.Duration }
	calls := map[int][]call{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var k, i int
		var sched, end int64
		if _, err := fmt.Sscan(sc.Text(), &k, &i, &sched, &end); err != nil {
			return fmt.Errorf("%s: %w", logPath, err)
		}
		for len(calls[k]) <= i {
			calls[k] = append(calls[k], call{})
		}
		calls[k][i] = call{time.Duration(sched), time.Duration(end)}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	for _, c := range clients {
		// The request's first HEADERS and the response's last on each stream of the
		// load generator's connection.
		port := c.local
		if port == 0 {
			for k := range c.wire.reqIn {
				if port != 0 && k.port != port {
					return fmt.Errorf("client %d: more than one connection to port %d; give its local port", c.target, c.wire.listen)
				}
				port = k.port
			}
		}
		last := map[uint32]time.Duration{}
		for _, o := range c.wire.respOut {
			if o.port == port {
				last[o.stream] = o.t
			}
		}
		var before, wire, after, total []time.Duration
		odd := 0
		for i, cl := range calls[c.target] {
			s := uint32(201 + 2*i)
			in, ok1 := c.wire.reqIn[streamKey{port, s}]
			out, ok2 := last[s]
			if !ok1 || !ok2 {
				continue
			}
			if in < cl.sched || cl.end < out {
				odd++ // calls started out of order, or a clock step: not counted
				continue
			}
			before = append(before, in-cl.sched)
			wire = append(wire, out-in)
			after = append(after, cl.end-out)
			total = append(total, cl.end-cl.sched)
		}
		name := fmt.Sprintf("target %d", c.target)
		fmt.Printf("%s: %d calls matched, %d out of order\n", name, len(total), odd)
		report(name+" before the wire", before, len(calls[c.target]))
		report(name+" on the wire    ", wire, len(calls[c.target]))
		report(name+" after the wire ", after, len(calls[c.target]))
		report(name+" whole call     ", total, len(calls[c.target]))
	}
	return nil
}
