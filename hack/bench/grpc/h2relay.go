package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2relay is the least an HTTP/2-terminating hop can do, the reference between the TCP
// forwarder and a sidecar (hack/bench-grpc.sh L4=1): every prior-knowledge h2c connection
// to listen gets one h2c connection to to; HEADERS are decoded and encoded again with the
// stream renumbered, DATA and RST_STREAM are passed on, SETTINGS and PINGs are answered,
// and windows are made so large that flow control never waits (a unary call is < 100 B).
// No routing, no policy, no telemetry, no bounds: a benchmark tool, one processor, one
// goroutine reading each side, each batch read written in one write(2).
func h2relay(listen, to string) error {
	return eachConn(listen, to, func(c, u net.Conn) {
		p := &relayPair{toUp: map[uint32]uint32{}, toDown: map[uint32]uint32{}, next: 1}
		p.down.init(c, &p.mu)
		p.up.init(u, &p.mu)
		// The upstream's preface goes first, before a request read from the caller can.
		if err := p.start(&p.up, http2.ClientPreface); err != nil {
			c.Close()
			u.Close()
			return
		}
		go func() {
			if err := p.run(&p.up, false); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				fmt.Fprintf(os.Stderr, "h2relay %s: upstream side: %v\n", listen, err)
			}
			c.Close()
		}()
		if err := p.run(&p.down, true); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			fmt.Fprintf(os.Stderr, "h2relay %s: caller side: %v\n", listen, err)
		}
		u.Close()
	})
}

// relayWindow is every window the relay grants: far more than a benchmark holds.
const relayWindow = 1 << 30

// relayPair is one caller connection (down) and its upstream connection (up).
type relayPair struct {
	mu           sync.Mutex // the maps, next and both sides' output
	down, up     relaySide
	toUp, toDown map[uint32]uint32 // stream IDs, caller's to upstream's and back
	next         uint32            // the next upstream stream ID
}

// relaySide is one connection's output: frames queued under relayPair.mu, written by
// flush in one write(2).
type relaySide struct {
	c   net.Conn
	mu  *sync.Mutex
	buf bytes.Buffer
	fr  *http2.Framer // writes into buf
	enc *hpack.Encoder
	eb  bytes.Buffer
}

func (s *relaySide) init(c net.Conn, mu *sync.Mutex) {
	s.c, s.mu = c, mu
	s.fr = http2.NewFramer(&s.buf, nil)
	s.enc = hpack.NewEncoder(&s.eb)
}

// flush writes what is queued; s.mu is held.
func (s *relaySide) flush() error {
	if s.buf.Len() == 0 {
		return nil
	}
	_, err := s.c.Write(s.buf.Bytes())
	s.buf.Reset()
	return err
}

// run reads side from's frames until the connection fails and relays them to the other
// side. The caller's side (fromCaller) starts by reading the client preface and sending
// the relay's SETTINGS; the upstream's were sent when it was dialed.
func (p *relayPair) run(from *relaySide, fromCaller bool) error {
	to := &p.up
	if !fromCaller {
		to = &p.down
	}
	br := bufio.NewReaderSize(from.c, 32<<10)
	if fromCaller {
		pre := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(br, pre); err != nil {
			return err // io.EOF: a port probe, quietly
		}
		if string(pre) != http2.ClientPreface {
			return errors.New("no client preface")
		}
		p.mu.Lock()
		err := p.start(from, "")
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
	fr := http2.NewFramer(nil, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var returned uint32 // connection window consumed by DATA and not yet given back
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		p.mu.Lock()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = from.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = from.fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			id, ok := p.peer(f.StreamID, fromCaller)
			if !ok && fromCaller {
				id = p.next
				p.next += 2
				p.toUp[f.StreamID], p.toDown[id] = id, f.StreamID
				ok = true
			}
			if ok {
				to.eb.Reset()
				for _, hf := range f.Fields {
					_ = to.enc.WriteField(hf)
				}
				_ = to.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: to.eb.Bytes(),
					EndStream: f.StreamEnded(), EndHeaders: true})
				if f.StreamEnded() && !fromCaller {
					p.forget(id, f.StreamID)
				}
			}
		case *http2.DataFrame:
			if id, ok := p.peer(f.StreamID, fromCaller); ok {
				_ = to.fr.WriteData(id, f.StreamEnded(), f.Data())
				if f.StreamEnded() && !fromCaller {
					p.forget(id, f.StreamID)
				}
			}
			if returned += f.Length; returned >= relayWindow/2 {
				_ = from.fr.WriteWindowUpdate(0, returned)
				returned = 0
			}
		case *http2.RSTStreamFrame:
			if id, ok := p.peer(f.StreamID, fromCaller); ok {
				_ = to.fr.WriteRSTStream(id, f.ErrCode)
				if fromCaller {
					p.forget(f.StreamID, id)
				} else {
					p.forget(id, f.StreamID)
				}
			}
		case *http2.GoAwayFrame:
			p.mu.Unlock()
			return fmt.Errorf("GOAWAY %v %q", f.ErrCode, f.DebugData())
		}
		if br.Buffered() == 0 { // the batch read is done: one write to each side
			err = to.flush()
			if e := from.flush(); err == nil {
				err = e
			}
		}
		p.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// start sends side's first frames: prefix (the client preface toward the upstream), then
// SETTINGS and the connection's window; p.mu is held.
func (p *relayPair) start(side *relaySide, prefix string) error {
	side.buf.WriteString(prefix)
	_ = side.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: relayWindow},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1000})
	_ = side.fr.WriteWindowUpdate(0, relayWindow)
	return side.flush()
}

// peer is the other side's ID of stream id read on the caller's side (fromCaller) or the
// upstream's.
func (p *relayPair) peer(id uint32, fromCaller bool) (uint32, bool) {
	if fromCaller {
		v, ok := p.toUp[id]
		return v, ok
	}
	v, ok := p.toDown[id]
	return v, ok
}

// forget ends the mapping of caller stream down to upstream stream up.
func (p *relayPair) forget(down, up uint32) {
	delete(p.toUp, down)
	delete(p.toDown, up)
}
