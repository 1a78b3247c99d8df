package telemetry

import (
	"bufio"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// DefaultAccessLogBuffer is how many bytes of lines the access log holds for its writer
// (about 2,000 typical lines); past it, lines are dropped and counted
// (weft_access_log_dropped_total) rather than making traffic wait for stdout.
const DefaultAccessLogBuffer = 1 << 20

// DefaultAccessLogFlush is the longest a line waits before it is written (Envoy flushes
// its access logs every second by default); a buffer half full is written at once.
const DefaultAccessLogFlush = 100 * time.Millisecond

// maxLogField bounds one field: longer paths, authorities or user agents are cut.
const maxLogField = 2048

// The listeners an access log can be limited to (AccessLogOptions.Listener).
const (
	ListenerInbound  = "inbound"
	ListenerOutbound = "outbound"
)

// AccessLogOptions configure an AccessLog.
type AccessLogOptions struct {
	// Out receives the JSON lines (os.Stdout when nil).
	Out io.Writer
	// SamplePerMillion is the share of exchanges logged (1_000_000 or 0: all).
	SamplePerMillion uint32
	// MinStatus logs only exchanges answered with at least this status (0: all); an
	// exchange without an answer (status 0: the caller left, the upstream reset) is always
	// logged.
	MinStatus int
	// Listener limits the log to one listener's exchanges: "inbound" or "outbound"; empty
	// logs both (as Envoy, whose access logs are configured per listener).
	Listener string
	// Buffer bounds the bytes of lines waiting for Out (DefaultAccessLogBuffer when zero).
	Buffer int
	// Flush is how often waiting lines are written (DefaultAccessLogFlush when zero).
	Flush time.Duration
}

// AccessLog writes one JSON line per exchange with Envoy's field names. Lines are
// appended to a buffer of at most Buffer bytes, which one goroutine swaps out and writes
// every Flush or when it is half full: traffic never waits for Out, and no goroutine is
// woken per line.
type AccessLog struct {
	o AccessLogOptions

	mu      sync.Mutex
	buf     []byte
	closed  bool
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	scratch sync.Pool

	closeOnce        sync.Once
	written, dropped atomic.Uint64
}

// NewAccessLog starts the access log's writer; Close stops it.
func NewAccessLog(o AccessLogOptions) *AccessLog {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Buffer <= 0 {
		o.Buffer = DefaultAccessLogBuffer
	}
	if o.Flush <= 0 {
		o.Flush = DefaultAccessLogFlush
	}
	if o.SamplePerMillion == 0 {
		o.SamplePerMillion = 1_000_000
	}
	a := &AccessLog{o: o, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		buf: make([]byte, 0, min(o.Buffer, 64<<10))}
	a.scratch.New = func() any { b := make([]byte, 0, 1024); return &b }
	go a.run()
	return a
}

func (a *AccessLog) run() {
	defer close(a.done)
	t := time.NewTicker(a.o.Flush)
	defer t.Stop()
	var spare []byte
	for {
		stopping := false
		select {
		case <-a.kick:
		case <-t.C:
		case <-a.stop:
			stopping = true
		}
		a.mu.Lock()
		out := a.buf
		a.buf = spare[:0]
		a.mu.Unlock()
		if len(out) > 0 {
			_, _ = a.o.Out.Write(out)
		}
		spare = out
		if stopping {
			return
		}
	}
}

// Close writes what is waiting and stops the writer. Lines logged after it are dropped.
func (a *AccessLog) Close() {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true
		a.mu.Unlock()
		close(a.stop)
	})
	<-a.done
}

// Stats returns the lines taken for writing and dropped so far.
func (a *AccessLog) Stats() (written, dropped uint64) { return a.written.Load(), a.dropped.Load() }

// takes reports whether the filter and the sampling take an exchange answered with status.
func (a *AccessLog) takes(status int) bool {
	if status != 0 && status < a.o.MinStatus {
		return false
	}
	return a.o.SamplePerMillion >= 1_000_000 || rand.Uint32N(1_000_000) < a.o.SamplePerMillion
}

// Log adds r's line, or drops it when the buffer is full. peer is the downstream
// workload (Istio's source).
func (a *AccessLog) Log(r *HTTPRecord, peer *side) {
	if (a.o.Listener == ListenerInbound && !r.Inbound) || (a.o.Listener == ListenerOutbound && r.Inbound) || !a.takes(r.Status) {
		return
	}
	bp := a.scratch.Get().(*[]byte)
	line := appendLine((*bp)[:0], r, peer)
	a.mu.Lock()
	full := a.closed || len(a.buf)+len(line) > a.o.Buffer
	if !full {
		a.buf = append(a.buf, line...)
	}
	half := len(a.buf) > a.o.Buffer/2
	a.mu.Unlock()
	if cap(line) <= 16<<10 {
		*bp = line[:0]
		a.scratch.Put(bp)
	}
	if full {
		a.dropped.Add(1)
		return
	}
	a.written.Add(1)
	if half {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

func (a *AccessLog) writePrometheus(w *bufio.Writer) {
	header(w, "weft_access_log_lines_total", "counter", "Access-log lines queued for stdout.")
	w.WriteString("weft_access_log_lines_total " + strconv.FormatUint(a.written.Load(), 10) + "\n")
	header(w, "weft_access_log_dropped_total", "counter", "Access-log lines dropped because the queue to stdout was full.")
	w.WriteString("weft_access_log_dropped_total " + strconv.FormatUint(a.dropped.Load(), 10) + "\n")
}

// appendLine renders r as one JSON object and a newline, with the field names of Envoy's
// default JSON access log format.
func appendLine(b []byte, r *HTTPRecord, peer *side) []byte {
	b = append(b, `{"start_time":"`...)
	b = r.Start.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, '"')
	str := func(k, v string) {
		b = append(b, `,"`...)
		b = append(b, k...)
		b = append(b, `":`...)
		if v == "" {
			b = append(b, "null"...)
			return
		}
		b = appendJSONString(b, v)
	}
	num := func(k string, v int64) {
		b = append(b, `,"`...)
		b = append(b, k...)
		b = append(b, `":`...)
		b = strconv.AppendInt(b, v, 10)
	}
	str("method", r.Method)
	str("path", r.Path)
	str("protocol", r.Protocol)
	num("response_code", int64(r.Status))
	flags := r.Flags
	if flags == "" {
		flags = "-"
	}
	str("response_flags", flags)
	num("bytes_received", r.ReqBytes)
	num("bytes_sent", r.RespBytes)
	num("duration", int64(r.Duration/time.Millisecond))
	str("upstream_host", r.UpstreamHost)
	str("upstream_cluster", r.Cluster)
	str("x_request_id", r.RequestID)
	str("authority", r.Authority)
	str("user_agent", r.UserAgent)
	str("downstream_remote_address", r.DownstreamRemote)
	if peer != nil {
		str("downstream_peer", peer.workload+"."+peer.namespace)
		str("downstream_peer_principal", peer.principal)
	}
	return append(b, "}\n"...)
}

// appendJSONString appends s as a JSON string: quotes, backslashes and control bytes
// escaped, invalid UTF-8 replaced, at most maxLogField bytes of s.
func appendJSONString(b []byte, s string) []byte {
	if len(s) > maxLogField {
		s = s[:maxLogField]
	}
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
