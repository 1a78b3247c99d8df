package upstream

import (
	"log/slog"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Diagnostics for exchanges that wait long on their upstream: the slow-exchange log and the
// admin endpoint /debug/exchanges (Envoy's admin shows connection state much the same
// way). They tell a slow host (bytes acknowledged, nothing read back yet) from a connection
// whose peer vanished (bytes unacknowledged, retransmissions climbing) without a packet
// capture.

// SlowAfter is the age past which an exchange still in flight is logged, once.
var SlowAfter = 5 * time.Second

// maxSlowLogs bounds the slow-exchange lines logged per sweep (every SlowAfter); the
// rest are only counted in the line that says how many more there were.
const maxSlowLogs = 8

// Exchange is one request in flight to a host.
type Exchange struct {
	Path    string        `json:"path"` // "loop" (event loop) or "goroutine"
	Cluster string        `json:"cluster"`
	Host    string        `json:"host"`
	Age     time.Duration `json:"age"`
	Attempt int           `json:"attempt,omitempty"` // retries before this attempt (loop only)
	Reused  bool          `json:"reused"`            // the connection had carried a request before
	TCP     *TCPState     `json:"tcp,omitempty"`
}

// LogAttrs lists e as key/value pairs for a log line.
func (e Exchange) LogAttrs() []any {
	kv := []any{"path", e.Path, "cluster", e.Cluster, "host", e.Host, "age", e.Age.Round(time.Millisecond),
		"attempt", e.Attempt, "reused", e.Reused}
	if t := e.TCP; t != nil {
		kv = append(kv, "tcpState", t.State, "unackedSegs", t.Unacked, "retransmits", t.Retransmits,
			"sinceSentMs", t.SinceSentMs, "sinceRecvMs", t.SinceRecvMs, "sinceAckMs", t.SinceAckMs, "rttUs", t.RTTUs)
	}
	return kv
}

// TCPState is what the kernel says of a connection (TCP_INFO).
type TCPState struct {
	State       string `json:"state"`
	Unacked     uint32 `json:"unackedSegments"`
	Retransmits uint32 `json:"retransmits"` // in total on this connection
	SinceSentMs uint32 `json:"sinceLastSentMs"`
	SinceRecvMs uint32 `json:"sinceLastReceivedMs"`
	SinceAckMs  uint32 `json:"sinceLastAckMs"`
	RTTUs       uint32 `json:"rttUs"`
}

var tcpStates = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
	"CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"}

// ReadTCPState reads fd's TCP_INFO; nil if it cannot.
func ReadTCPState(fd int) *TCPState {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return nil
	}
	st := "unknown"
	if int(ti.State) < len(tcpStates) {
		st = tcpStates[ti.State]
	}
	return &TCPState{State: st, Unacked: ti.Unacked, Retransmits: ti.Total_retrans,
		SinceSentMs: ti.Last_data_sent, SinceRecvMs: ti.Last_data_recv, SinceAckMs: ti.Last_ack_recv, RTTUs: ti.Rtt}
}

func connTCPState(c syscall.Conn) *TCPState {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	var t *TCPState
	_ = rc.Control(func(fd uintptr) { t = ReadTCPState(int(fd)) })
	return t
}

// flight is a goroutine-path exchange on a pooled connection (RoundTrip to body end).
type flight struct {
	host   *Host
	start  time.Time
	reused bool
	logged bool
}

// inflight is a cluster's goroutine-path exchanges. Its lock is taken twice per exchange
// (begin, end); it holds one entry per exchange in flight, so its size is bounded by the
// cluster's max_requests circuit breaker.
type inflight struct {
	mu sync.Mutex
	m  map[*pconn]flight
}

func (f *inflight) begin(pc *pconn, h *Host, reused bool) {
	f.mu.Lock()
	if f.m == nil {
		f.m = map[*pconn]flight{}
	}
	f.m[pc] = flight{host: h, start: time.Now(), reused: reused}
	f.mu.Unlock()
}

func (f *inflight) end(pc *pconn) {
	f.mu.Lock()
	delete(f.m, pc)
	f.mu.Unlock()
}

// exchanges lists the cluster's goroutine-path exchanges older than minAge; with mark set
// it returns only those not listed with mark before, and marks them.
func (c *Cluster) exchanges(now time.Time, minAge time.Duration, mark bool) []Exchange {
	type one struct {
		pc *pconn
		f  flight
	}
	var picked []one
	c.flights.mu.Lock()
	for pc, f := range c.flights.m {
		if now.Sub(f.start) < minAge || (mark && f.logged) {
			continue
		}
		if mark {
			f.logged = true
			c.flights.m[pc] = f
		}
		picked = append(picked, one{pc, f})
	}
	c.flights.mu.Unlock()
	out := make([]Exchange, 0, len(picked))
	for _, p := range picked {
		e := Exchange{Path: "goroutine", Cluster: c.Name, Host: p.f.host.Address, Age: now.Sub(p.f.start), Reused: p.f.reused}
		if sc, ok := p.pc.conn.Conn.(syscall.Conn); ok {
			e.TCP = connTCPState(sc)
		}
		out = append(out, e)
	}
	return out
}

// Exchanges lists the goroutine-path exchanges in flight for at least minAge, oldest first.
func (m *Manager) Exchanges(minAge time.Duration) []Exchange {
	now := time.Now()
	var out []Exchange
	for _, c := range *m.clusters.Load() {
		out = append(out, c.exchanges(now, minAge, false)...)
	}
	SortExchanges(out)
	return out
}

// SortExchanges sorts oldest first.
func SortExchanges(es []Exchange) {
	sort.Slice(es, func(i, j int) bool { return es[i].Age > es[j].Age })
}

// LogSlow logs, every SlowAfter until the manager's context ends, each goroutine-path
// exchange that has been in flight for SlowAfter, once, at most maxSlowLogs a sweep.
// The event loop logs its own (httpproxy).
func (m *Manager) LogSlow(log *slog.Logger) {
	m.slowOnce.Do(func() {
		after := SlowAfter // read here: the goroutine may outlive a test that changes it
		go func() {
			t := m.clock.NewTicker(after)
			defer t.Stop()
			for {
				select {
				case <-m.ctx.Done():
					return
				case <-t.C():
				}
				now := time.Now()
				var slow []Exchange
				for _, c := range *m.clusters.Load() {
					slow = append(slow, c.exchanges(now, after, true)...)
				}
				LogExchanges(log, slow)
			}
		}()
	})
}

// LogExchanges logs up to maxSlowLogs of slow, and how many more there were.
func LogExchanges(log *slog.Logger, slow []Exchange) {
	for i, e := range slow {
		if i == maxSlowLogs {
			log.Warn("more slow upstream exchanges not logged", "count", len(slow)-i)
			return
		}
		log.Warn("slow upstream exchange: no complete response yet", e.LogAttrs()...)
	}
}
