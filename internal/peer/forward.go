package peer

import (
	"context"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/internal/autoscale"
)

// LeaderFinder names the peer address of the current leader, "" with no error while no
// replica leads.
type LeaderFinder interface {
	Leader(ctx context.Context) (string, error)
}

// LeaderFinderFunc adapts a function to LeaderFinder.
type LeaderFinderFunc func(ctx context.Context) (string, error)

// Leader calls f.
func (f LeaderFinderFunc) Leader(ctx context.Context) (string, error) { return f(ctx) }

// Forwarder is the signal service's sink on every replica: on the leader it hands signals
// to the local autoscaler, on a follower it buffers them (bounded: MaxBufferedStats,
// MaxBufferedDemands) and sends them to the leader, demand at once and stats every
// statDelay, looking the leader up again when a call fails. It also sends the leader this
// replica's Report on every change of its sidecars (NodesChanged) and every
// ReportInterval. When its replica becomes the leader it applies what it still holds
// locally.
type Forwarder struct {
	Replica string
	Leader  LeaderFinder
	// Dial connects to a peer address (TLS and the peer token; see Credentials).
	Dial  func(addr string) (*grpc.ClientConn, error)
	Local autoscale.SignalSink
	// Elected is closed once this replica leads.
	Elected <-chan struct{}
	// Report builds this replica's report.
	Report func() Report
	Clock  Clock
	Log    logr.Logger

	once sync.Once
	wake chan struct{}

	mu          sync.Mutex
	stats       []bufferedStat
	demand      map[demandKey]Demand
	reportDirty bool
	timer       bool // a delayed wake is scheduled
	dropped     int
}

// Clock is what the Forwarder needs of time: clock.RealClock or a fake in tests.
type Clock interface {
	clock.WithTicker
	AfterFunc(d time.Duration, f func()) clock.Timer
}

type bufferedStat struct {
	Stat
	at time.Time
}

type demandKey struct {
	ns, name, caller string
	held             bool
}

// statDelay batches the stats of many pods into one call.
const statDelay = 100 * time.Millisecond

func (f *Forwarder) init() {
	f.once.Do(func() {
		f.wake = make(chan struct{}, 1)
		f.demand = map[demandKey]Demand{}
		if f.Clock == nil {
			f.Clock = clock.RealClock{}
		}
	})
}

func (f *Forwarder) leading() bool {
	select {
	case <-f.Elected:
		return true
	default:
		return false
	}
}

// Record forwards a verified stat (or records it, on the leader).
func (f *Forwarder) Record(s autoscale.Stat) bool {
	if f.leading() {
		return f.Local.Record(s)
	}
	f.init()
	f.mu.Lock()
	if len(f.stats) >= MaxBufferedStats {
		f.stats = f.stats[1:]
		f.dropped++
	}
	f.stats = append(f.stats, bufferedStat{Stat: Stat{Namespace: s.Function.Namespace, Name: s.Function.Name, Pod: s.Pod,
		Concurrency: s.Concurrency, Requests: s.Requests, InFlight: s.InFlight}, at: f.Clock.Now()})
	f.mu.Unlock()
	f.later(statDelay)
	return true
}

// Poke forwards a poke. On a follower it reports true: only the leader knows the
// function, and a sidecar re-sends while it holds requests anyway.
func (f *Forwarder) Poke(fn autoscale.FunctionKey) bool {
	if f.leading() {
		return f.Local.Poke(fn)
	}
	f.addDemand(Demand{Namespace: fn.Namespace, Name: fn.Name})
	return true
}

// Held forwards a caller's held count; a later count of the same caller replaces it.
func (f *Forwarder) Held(fn autoscale.FunctionKey, caller string, n int) bool {
	if f.leading() {
		return f.Local.Held(fn, caller, n)
	}
	f.addDemand(Demand{Namespace: fn.Namespace, Name: fn.Name, Caller: caller, Held: &n})
	return true
}

func (f *Forwarder) addDemand(d Demand) {
	f.init()
	k := demandKey{d.Namespace, d.Name, d.Caller, d.Held != nil}
	f.mu.Lock()
	if _, ok := f.demand[k]; ok || len(f.demand) < MaxBufferedDemands {
		f.demand[k] = d
	} else {
		f.dropped++
	}
	f.mu.Unlock()
	f.poke()
}

// NodesChanged notes that this replica's sidecars connected, left, ACKed or NACKed: the
// leader gets a new report within ReportDelay. It never blocks.
func (f *Forwarder) NodesChanged() {
	f.init()
	f.mu.Lock()
	f.reportDirty = true
	f.mu.Unlock()
	f.later(ReportDelay)
}

func (f *Forwarder) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// later wakes the loop after d unless a delayed wake is already scheduled.
func (f *Forwarder) later(d time.Duration) {
	f.mu.Lock()
	scheduled := f.timer
	f.timer = true
	f.mu.Unlock()
	if scheduled {
		return
	}
	f.Clock.AfterFunc(d, func() {
		f.mu.Lock()
		f.timer = false
		f.mu.Unlock()
		f.poke()
	})
}

// take empties the buffers into a batch, dropping stats older than MaxStatAge. It reports
// whether a report is due.
func (f *Forwarder) take() (*Signals, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := &Signals{Replica: f.Replica}
	now := f.Clock.Now()
	for _, s := range f.stats {
		if now.Sub(s.at) <= MaxStatAge {
			b.Stats = append(b.Stats, s.Stat)
		}
	}
	f.stats = f.stats[:0]
	for k, d := range f.demand {
		b.Demand = append(b.Demand, d)
		delete(f.demand, k)
	}
	dirty := f.reportDirty
	f.reportDirty = false
	return b, dirty
}

// putBack returns a batch that did not reach the leader to the buffers (newer entries win).
func (f *Forwarder) putBack(b *Signals, report bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.Clock.Now()
	old := make([]bufferedStat, 0, len(b.Stats)+len(f.stats))
	for _, s := range b.Stats {
		old = append(old, bufferedStat{Stat: s, at: now})
	}
	f.stats = append(old, f.stats...)
	if n := len(f.stats) - MaxBufferedStats; n > 0 {
		f.stats = f.stats[n:]
		f.dropped += n
	}
	for _, d := range b.Demand {
		k := demandKey{d.Namespace, d.Name, d.Caller, d.Held != nil}
		if _, newer := f.demand[k]; !newer && len(f.demand) < MaxBufferedDemands {
			f.demand[k] = d
		}
	}
	f.reportDirty = f.reportDirty || report
}

// NeedLeaderElection is false: followers forward; the leader's Forwarder applies what it
// buffered before it led.
func (f *Forwarder) NeedLeaderElection() bool { return false }

// Start sends until ctx ends.
func (f *Forwarder) Start(ctx context.Context) error {
	f.init()
	tick := f.Clock.NewTicker(ReportInterval)
	defer tick.Stop()
	var (
		conn     *grpc.ClientConn
		addr     string
		backoff  time.Duration
		lastSent time.Time
		nextTry  time.Time
	)
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.wake:
		case <-tick.C():
		}
		if now := f.Clock.Now(); !f.leading() && now.Before(nextTry) {
			f.later(nextTry.Sub(now)) // backing off; the buffers keep what arrives
			continue
		}
		b, dirty := f.take()
		if f.leading() {
			Apply(f.Local, b)
			continue
		}
		heartbeat := f.Clock.Since(lastSent) >= ReportInterval
		if len(b.Stats) == 0 && len(b.Demand) == 0 && !dirty && !heartbeat {
			continue
		}
		err := func() error {
			if conn == nil {
				a, err := f.Leader.Leader(ctx)
				if err != nil || a == "" {
					return errNoLeader{err}
				}
				if conn, err = f.Dial(a); err != nil {
					return err
				}
				if a != addr {
					f.Log.Info("forwarding sidecar signals and ACK state to the leader", "leader", a)
				}
				addr, dirty = a, true // a new leader needs the full report now
			}
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			if len(b.Stats)+len(b.Demand) > 0 {
				if err := conn.Invoke(cctx, SignalsMethod, b, &Ack{}); err != nil {
					return err
				}
				b = &Signals{}
			}
			if dirty || heartbeat {
				if err := conn.Invoke(cctx, NodesMethod, f.report(), &Ack{}); err != nil {
					return err
				}
				lastSent, dirty = f.Clock.Now(), false
			}
			return nil
		}()
		if err == nil {
			backoff = 0
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		f.putBack(b, dirty)
		if conn != nil {
			_ = conn.Close()
			conn = nil
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), time.Second)
		nextTry = f.Clock.Now().Add(backoff)
		f.Log.V(1).Info("forwarding to the leader failed; looking it up again", "leader", addr, "retryIn", backoff, "error", err.Error())
		f.later(backoff)
	}
}

func (f *Forwarder) report() *Report {
	r := f.Report()
	r.Replica = f.Replica
	return &r
}

// errNoLeader: no replica holds the lease (or it could not be read).
type errNoLeader struct{ err error }

func (e errNoLeader) Error() string {
	if e.err != nil {
		return "looking up the leader: " + e.err.Error()
	}
	return "no replica leads yet"
}
