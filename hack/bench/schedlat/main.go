// Command schedlat reads a Go runtime execution trace (the sidecar's admin
// /debug/pprof/trace) and prints how long goroutines waited between becoming runnable and
// running — the scheduler's share of a proxy's latency — and, for the slowest waits, what
// the process was doing meanwhile:
//
//   - another goroutine was running: Go-level queueing behind it (or the OS preempting that
//     goroutine's thread, which the trace cannot tell apart: see its run length);
//
//   - a processor was running but no goroutine: the runtime's own scheduling work;
//
//   - no processor was running: the wake-up waited for the OS to run a thread.
//
//     schedlat [-slow 200us] [-top 8] trace.out
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	slow := flag.Duration("slow", 200*time.Microsecond, "a wait at least this long counts as slow")
	top := flag.Int("top", 8, "how many of the goroutines running during slow waits to list")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: schedlat [-slow d] [-top n] trace.out")
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	r, err := analyze(f, *slow)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	r.print(os.Stdout, *slow, *top)
}

// clock integrates how long a condition held, so the time it held during any interval is
// the difference of two readings.
type clock struct {
	on    bool
	since trace.Time
	total time.Duration
}

func (c *clock) set(on bool, t trace.Time) {
	if c.on == on {
		return
	}
	if c.on {
		c.total += t.Sub(c.since)
	}
	c.on, c.since = on, t
}

func (c *clock) at(t trace.Time) time.Duration {
	if c.on {
		return c.total + t.Sub(c.since)
	}
	return c.total
}

type waiting struct {
	since           trace.Time
	goBusy, pBusy   time.Duration // clock readings when the wait began
	gc              time.Duration
	runsBefore      map[trace.GoID]time.Duration
	unblockedByNone bool // made runnable outside any goroutine (the network poller, a timer)
}

type report struct {
	waits      []time.Duration
	slowWaits  int
	slowTotal  time.Duration
	slowGo     time.Duration // of slowTotal: another goroutine running
	slowRT     time.Duration // a processor running, no goroutine
	slowIdle   time.Duration // no processor running
	slowGC     time.Duration // of slowTotal: a GC phase active
	slowPolled int           // slow waits of goroutines the poller or a timer made runnable
	blockers   map[string]time.Duration
	runs       []time.Duration // every goroutine run's length
	span       time.Duration
}

func analyze(in io.Reader, slow time.Duration) (*report, error) {
	tr, err := trace.NewReader(in)
	if err != nil {
		return nil, err
	}
	var (
		goRun, pRun, gc clock
		running         = map[trace.GoID]trace.Time{}    // goroutine → when it started running
		runTotal        = map[trace.GoID]time.Duration{} // goroutine → time run so far
		label           = map[trace.GoID]string{}
		waits           = map[trace.GoID]*waiting{}
		procs           = map[trace.ProcID]bool{}
		first, last     trace.Time
		rep             = &report{blockers: map[string]time.Duration{}}
	)
	ranOf := func(g trace.GoID, t trace.Time) time.Duration {
		d := runTotal[g]
		if s, ok := running[g]; ok {
			d += t.Sub(s)
		}
		return d
	}
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		t := ev.Time()
		if first == 0 {
			first = t
		}
		last = t
		switch ev.Kind() {
		case trace.EventRangeBegin, trace.EventRangeActive, trace.EventRangeEnd:
			// The process-wide GC ranges (the concurrent mark phase, stop-the-world pauses);
			// mark assists and sweeps are ranges per goroutine or processor and would end
			// the phase early here.
			if r := ev.Range(); r.Scope.Kind == trace.ResourceNone && (strings.HasPrefix(r.Name, "GC") || strings.Contains(r.Name, "stop-the-world")) {
				gc.set(ev.Kind() != trace.EventRangeEnd, t)
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			switch st.Resource.Kind {
			case trace.ResourceProc:
				_, to := st.Proc()
				procs[st.Resource.Proc()] = to.Executing()
				pRun.set(anyTrue(procs), t)
			case trace.ResourceGoroutine:
				g := st.Resource.Goroutine()
				from, to := st.Goroutine()
				if _, ok := label[g]; !ok {
					if l := entry(st.Stack); l != "" {
						label[g] = l // its start function (at creation), or the bottom of a stack it blocked with
					}
				}
				if from == trace.GoRunning {
					if s, ok := running[g]; ok {
						d := t.Sub(s)
						runTotal[g] += d
						rep.runs = append(rep.runs, d)
						delete(running, g)
					}
				}
				switch to {
				case trace.GoRunnable:
					w := &waiting{since: t, goBusy: goRun.at(t), pBusy: pRun.at(t), gc: gc.at(t),
						unblockedByNone: ev.Goroutine() == trace.NoGoroutine, runsBefore: map[trace.GoID]time.Duration{}}
					// Every goroutine that has run: a goroutine first seen running during the
					// wait counts from zero.
					for og := range runTotal {
						w.runsBefore[og] = ranOf(og, t)
					}
					for og := range running {
						w.runsBefore[og] = ranOf(og, t)
					}
					waits[g] = w
				case trace.GoRunning:
					if w, ok := waits[g]; ok {
						delete(waits, g)
						d := t.Sub(w.since)
						rep.waits = append(rep.waits, d)
						if d >= slow {
							gb := goRun.at(t) - w.goBusy
							pb := pRun.at(t) - w.pBusy
							rep.slowWaits++
							rep.slowTotal += d
							rep.slowGo += gb
							rep.slowRT += max(pb-gb, 0)
							rep.slowIdle += max(d-max(pb, gb), 0)
							rep.slowGC += gc.at(t) - w.gc
							if w.unblockedByNone {
								rep.slowPolled++
							}
							blocked := func(og trace.GoID) {
								if ran := ranOf(og, t) - w.runsBefore[og]; og != g && ran > 0 {
									rep.blockers[cmp.Or(label[og], "?")] += ran
								}
							}
							for og := range runTotal {
								blocked(og)
							}
							for og := range running {
								if _, ok := runTotal[og]; !ok { // still in its first run
									blocked(og)
								}
							}
						}
					}
					running[g] = t
				}
				goRun.set(len(running) > 0, t)
			}
		}
	}
	rep.span = last.Sub(first)
	return rep, nil
}

func anyTrue(m map[trace.ProcID]bool) bool {
	for _, v := range m {
		if v {
			return true
		}
	}
	return false
}

// entry names a goroutine by the outermost function of its stack outside the runtime —
// what it was started with — or, for the runtime's own (a GC mark worker), the outermost.
func entry(s trace.Stack) string {
	name, outer := "", ""
	for f := range s.Frames() {
		outer = f.Func
		if !strings.HasPrefix(f.Func, "runtime.") && !strings.HasPrefix(f.Func, "internal/") {
			name = f.Func
		}
	}
	return cmp.Or(name, outer)
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

func (r *report) print(w io.Writer, slow time.Duration, top int) {
	slices.Sort(r.waits)
	slices.Sort(r.runs)
	fmt.Fprintf(w, "trace span %v: %d wake-ups (runnable → running): p50 %v p90 %v p99 %v p99.9 %v max %v\n",
		r.span.Round(time.Millisecond), len(r.waits), pct(r.waits, .5), pct(r.waits, .9), pct(r.waits, .99), pct(r.waits, .999), pct(r.waits, 1))
	fmt.Fprintf(w, "goroutine runs: %d, p50 %v p99 %v max %v\n", len(r.runs), pct(r.runs, .5), pct(r.runs, .99), pct(r.runs, 1))
	if r.slowWaits == 0 {
		fmt.Fprintf(w, "no wait ≥ %v\n", slow)
		return
	}
	share := func(d time.Duration) string { return fmt.Sprintf("%.0f %%", 100*float64(d)/float64(r.slowTotal)) }
	fmt.Fprintf(w, "waits ≥ %v: %d (%d made runnable by the poller or a timer), %v in all; during them: another goroutine running %s, a processor but no goroutine %s, no processor running (waiting for the OS) %s; a GC phase active %s\n",
		slow, r.slowWaits, r.slowPolled, r.slowTotal.Round(time.Microsecond), share(r.slowGo), share(r.slowRT), share(r.slowIdle), share(r.slowGC))
	type kv struct {
		k string
		v time.Duration
	}
	var b []kv
	for k, v := range r.blockers {
		b = append(b, kv{k, v})
	}
	slices.SortFunc(b, func(x, y kv) int { return cmp.Compare(y.v, x.v) })
	for i, x := range b {
		if i == top {
			break
		}
		fmt.Fprintf(w, "  ran during slow waits %10v  %s\n", x.v.Round(time.Microsecond), x.k)
	}
}
