package httpproxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// fc is a hand-written HTTP/2 caller (a raw framer): it sends what it is told, however
// malformed, grants window for everything it receives, and records per stream what the
// sidecar answered.
type fc struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex
	enc  *hpack.Encoder
	hb   bytes.Buffer
	next uint32

	mu        sync.Mutex
	streams   map[uint32]*fcStream
	settings  map[http2.SettingID]uint32
	goaway    *http2.GoAwayFrame
	gotGoaway chan struct{}
	goaways   []http2.GoAwayFrame // every GOAWAY received, in order
	pingAcks  chan [8]byte
	gone      chan struct{} // the reader ended: the connection is closed
	readErr   error
}

type fcStream struct {
	status   string
	fields   []hpack.HeaderField
	body     bytes.Buffer
	trailers []hpack.HeaderField
	rst      *http2.ErrCode
	ended    bool
	done     chan struct{}
}

// dialFC connects to the sidecar and sends the preface and SETTINGS. With ackFirst it
// reads the sidecar's SETTINGS and ACKs them before returning; otherwise the ACK goes out
// when the reader sees them (after whatever the test sends first).
func dialFC(t *testing.T, base string, ackFirst bool) *fc {
	t.Helper()
	return dialFCWith(t, base, ackFirst, nil, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
}

// dialFCWith is dialFC with the caller's SETTINGS given, and before, frames written after
// the SETTINGS (before anything is read).
func dialFCWith(t *testing.T, base string, ackFirst bool, before func(*http2.Framer), settings ...http2.Setting) *fc {
	t.Helper()
	conn, err := net.DialTimeout("tcp", st.HostPort(base), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &fc{t: t, conn: conn, fr: http2.NewFramer(conn, conn), next: 1, streams: map[uint32]*fcStream{},
		settings: map[http2.SettingID]uint32{}, gotGoaway: make(chan struct{}), gone: make(chan struct{}), pingAcks: make(chan [8]byte, 16)}
	table := uint32(4096)
	for _, st := range settings {
		if st.ID == http2.SettingHeaderTableSize {
			table = st.Val
		}
	}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(table, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.enc = hpack.NewEncoder(&c.hb)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteWindowUpdate(0, 16<<20); err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(c.fr)
	}
	if ackFirst {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the sidecar's SETTINGS: %v", err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			t.Fatalf("the sidecar's first frame is %v, want SETTINGS", f)
		}
		_ = sf.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
		_ = conn.SetReadDeadline(time.Time{})
		if err := c.fr.WriteSettingsAck(); err != nil {
			t.Fatal(err)
		}
	}
	go c.read()
	return c
}

func (c *fc) read() {
	defer close(c.gone)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) { // a header block our side cannot take: record it as a reset
				c.mu.Lock()
				if s := c.streams[se.StreamID]; s != nil && !s.ended {
					code := se.Code
					s.rst, s.ended = &code, true
					close(s.done)
				}
				c.mu.Unlock()
				continue
			}
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
				c.mu.Unlock()
				c.write(func() error { return c.fr.WriteSettingsAck() })
				continue
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				d := f.Data
				c.mu.Unlock()
				c.write(func() error { return c.fr.WritePing(true, d) })
				continue
			}
			select {
			case c.pingAcks <- f.Data:
			default:
			}
		case *http2.GoAwayFrame:
			c.t.Logf("GOAWAY from the sidecar: last stream %d, %v, %q", f.LastStreamID, f.ErrCode, f.DebugData())
			c.goaways = append(c.goaways, http2.GoAwayFrame{LastStreamID: f.LastStreamID, ErrCode: f.ErrCode})
			if c.goaway == nil {
				c.goaway = &http2.GoAwayFrame{LastStreamID: f.LastStreamID, ErrCode: f.ErrCode}
				close(c.gotGoaway)
			}
		case *http2.MetaHeadersFrame:
			if s := c.streams[f.StreamID]; s != nil && !s.ended {
				if s.status == "" || strings.HasPrefix(s.status, "1") {
					s.status = f.PseudoValue("status")
					s.fields = append([]hpack.HeaderField(nil), f.Fields...)
				} else {
					s.trailers = append([]hpack.HeaderField(nil), f.Fields...)
				}
				if f.StreamEnded() {
					s.ended = true
					close(s.done)
				}
			}
		case *http2.DataFrame:
			id, n := f.StreamID, len(f.Data())
			if s := c.streams[id]; s != nil && !s.ended {
				s.body.Write(f.Data())
				if f.StreamEnded() {
					s.ended = true
					close(s.done)
				}
			}
			c.mu.Unlock()
			if n > 0 {
				c.write(func() error {
					_ = c.fr.WriteWindowUpdate(0, uint32(n))
					return c.fr.WriteWindowUpdate(id, uint32(n))
				})
			}
			continue
		case *http2.RSTStreamFrame:
			if s := c.streams[f.StreamID]; s != nil && !s.ended {
				code := f.ErrCode
				s.rst, s.ended = &code, true
				close(s.done)
			}
		}
		c.mu.Unlock()
	}
}

func (c *fc) write(f func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return f()
}

// fields are a request's header fields in order, written as given (no lower-casing).
type fields [][2]string

func reqFields(method, path, host string, extra ...[2]string) fields {
	return append(fields{{":method", method}, {":scheme", "http"}, {":path", path}, {":authority", host}}, extra...)
}

// open sends a request's HEADERS on a new stream and returns its id.
func (c *fc) open(fs fields, end bool) uint32 {
	id, err := c.tryOpen(fs, end)
	if err != nil {
		c.t.Fatalf("writing HEADERS of stream %d: %v", id, err)
	}
	return id
}

// tryOpen is open, returning a write error (the sidecar may close the connection while a
// long header block is still being written).
func (c *fc) tryOpen(fs fields, end bool) (uint32, error) {
	c.wmu.Lock()
	id := c.next
	c.next += 2
	c.mu.Lock()
	c.streams[id] = &fcStream{done: make(chan struct{})}
	c.mu.Unlock()
	c.hb.Reset()
	for _, f := range fs {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	block := c.hb.Bytes()
	first := block[:min(len(block), 16384)]
	block = block[len(first):]
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for err == nil && len(block) > 0 { // CONTINUATION frames past the default frame size
		frag := block[:min(len(block), 16384)]
		block = block[len(frag):]
		err = c.fr.WriteContinuation(id, len(block) == 0, frag)
	}
	c.wmu.Unlock()
	return id, err
}

func (c *fc) data(id uint32, p []byte, end bool) error {
	return c.write(func() error {
		for len(p) > 16384 {
			if err := c.fr.WriteData(id, false, p[:16384]); err != nil {
				return err
			}
			p = p[16384:]
		}
		return c.fr.WriteData(id, end, p)
	})
}

func (c *fc) trailers(id uint32, fs fields) error {
	return c.write(func() error {
		c.hb.Reset()
		for _, f := range fs {
			_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hb.Bytes(), EndStream: true, EndHeaders: true})
	})
}

func (c *fc) reset(id uint32, code http2.ErrCode) error {
	return c.write(func() error { return c.fr.WriteRSTStream(id, code) })
}

// result is what the sidecar answered on a stream.
type result struct {
	status string
	body   string
	rst    *http2.ErrCode
	fields []hpack.HeaderField
}

func (r result) String() string {
	if r.rst != nil {
		return fmt.Sprintf("RST_STREAM(%v) after status %q body %q", *r.rst, r.status, r.body)
	}
	return fmt.Sprintf("status %q body %q", r.status, r.body)
}

// wait waits up to d for stream id to end (END_STREAM or RST_STREAM).
func (c *fc) wait(id uint32, d time.Duration) (result, bool) {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	select {
	case <-s.done:
	case <-c.gone:
		select {
		case <-s.done:
		default:
			c.mu.Lock()
			defer c.mu.Unlock()
			return result{status: s.status, body: s.body.String()}, false
		}
	case <-time.After(d):
		c.mu.Lock()
		defer c.mu.Unlock()
		return result{status: s.status, body: s.body.String()}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return result{status: s.status, body: s.body.String(), rst: s.rst, fields: s.fields}, true
}

// get sends a GET to host and wants 200 with body want (a prefix when it ends in "*").
func (c *fc) get(host, path, want string) {
	c.t.Helper()
	id := c.open(reqFields("GET", path, host), true)
	r, ok := c.wait(id, 10*time.Second)
	if !ok {
		c.t.Fatalf("GET %s %s on stream %d: no end within 10 s (%v; connection: %v)", host, path, id, r, c.err())
	}
	if r.rst != nil || r.status != "200" || r.body != want {
		c.t.Fatalf("GET %s %s on stream %d: %v, want status 200 body %q", host, path, id, r, want)
	}
}

func (c *fc) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

func (c *fc) goAway(d time.Duration) *http2.GoAwayFrame {
	select {
	case <-c.gotGoaway:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.goaway
	case <-time.After(d):
		return nil
	}
}

func (c *fc) closedWithin(d time.Duration) bool {
	select {
	case <-c.gone:
		return true
	case <-time.After(d):
		return false
	}
}

func isCode(r result, code http2.ErrCode) bool { return r.rst != nil && *r.rst == code }
