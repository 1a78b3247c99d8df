// Package admin serves the sidecar's operational endpoints: /ready (200 once the first
// complete config is applied), /stats (Prometheus text, hand-written to keep the binary
// small, with other components appending their own metrics through StatsWriter) and
// /config_dump (the resources in force as JSON, with inline secrets redacted), and
// /app-health/<container>/<kind>: the app's own probes, run for the kubelet (appprobe.go).
//
// Two handlers: the full admin API for localhost (default 127.0.0.1:15000), and a
// read-only metrics+readiness handler for the pod address (default :15020).
package admin

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
)

// StatsWriter appends Prometheus text-format metrics to /stats. The redis proxy and the
// activator implement it.
type StatsWriter interface {
	WritePrometheus(w io.Writer)
}

// Options wire the admin server to the rest of the sidecar.
type Options struct {
	// Config returns the config in force, nil before the first complete one.
	Config func() *config.Config
	// Status returns extra xDS session state for /config_dump (any JSON-encodable value).
	Status func() any
	// Exchanges lists the upstream exchanges in flight for at least minAge, for
	// /debug/exchanges (any JSON-encodable value); nil: the endpoint answers 404.
	Exchanges func(minAge time.Duration) any
	// Identity, when set, reports the workload certificate (identity.Manager.Status): not
	// ready without a valid one; a note (a failing renewal) is added to /ready's body.
	Identity func() (ready bool, note string)
	// AppProbes are the app's original probes (ParseAppProbes), which the metrics handler
	// runs at /app-health/<container>/<kind> for the kubelet (appprobe.go).
	AppProbes contract.AppProbes
}

// Server holds the admin handlers.
type Server struct {
	opts   Options
	probes *appProber
	mu     sync.Mutex
	stats  []StatsWriter
}

// New returns an admin server.
func New(opts Options) *Server {
	s := &Server{opts: opts, probes: newAppProber(opts.AppProbes)}
	if len(opts.AppProbes) > 0 {
		s.stats = append(s.stats, s.probes)
	}
	return s
}

// AddStats registers a component whose metrics /stats should include.
func (s *Server) AddStats(w StatsWriter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = append(s.stats, w)
}

// Handler is the full admin API; bind it to localhost only.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", s.ready)
	mux.HandleFunc("GET /stats", s.writeStats)
	mux.HandleFunc("GET /stats/prometheus", s.writeStats)
	mux.HandleFunc("GET /config_dump", s.configDump)
	mux.HandleFunc("GET /debug/exchanges", s.exchanges)
	mux.HandleFunc("GET /app-health/{container}/{kind}", s.probes.serve)
	// CPU and heap profiles of the live data plane, like Envoy's /cpuprofiler, and the
	// runtime's execution trace (?seconds=N; what hack/bench/schedlat reads); localhost only.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// MetricsHandler is the read-only subset safe to expose on the pod address.
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", s.ready)
	mux.HandleFunc("GET /stats", s.writeStats)
	mux.HandleFunc("GET /stats/prometheus", s.writeStats)
	mux.HandleFunc("GET /app-health/{container}/{kind}", s.probes.serve)
	return mux
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Config == nil || s.opts.Config() == nil {
		http.Error(w, "not ready: no complete config received from the control plane yet\n", http.StatusServiceUnavailable)
		return
	}
	if s.opts.Identity != nil {
		ok, note := s.opts.Identity()
		if !ok {
			http.Error(w, "not ready: "+note+"\n", http.StatusServiceUnavailable)
			return
		}
		if note != "" {
			_, _ = w.Write([]byte("ready\nwarning: " + note + "\n"))
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) writeStats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	s.mu.Lock()
	ws := append([]StatsWriter(nil), s.stats...)
	s.mu.Unlock()
	var buf bytes.Buffer
	for _, sw := range ws {
		sw.WritePrometheus(&buf)
	}
	_, _ = w.Write(buf.Bytes())
}

// exchanges answers /debug/exchanges[?min_age=1s]: the upstream exchanges in flight for
// at least min_age (default 0: all the goroutine path has, and the event loops' slow ones),
// oldest first, with their connections' TCP state.
func (s *Server) exchanges(w http.ResponseWriter, r *http.Request) {
	if s.opts.Exchanges == nil {
		http.NotFound(w, r)
		return
	}
	var minAge time.Duration
	if v := r.URL.Query().Get("min_age"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			http.Error(w, "min_age must be a duration such as 5s\n", http.StatusBadRequest)
			return
		}
		minAge = d
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s.opts.Exchanges(minAge))
}

// Dump is the /config_dump document.
type Dump struct {
	Versions  map[string]string                     `json:"versions"`
	XDS       any                                   `json:"xds,omitempty"`
	Resources map[string]map[string]json.RawMessage `json:"resources"`
}

func (s *Server) configDump(w http.ResponseWriter, _ *http.Request) {
	d := Dump{Versions: map[string]string{}, Resources: map[string]map[string]json.RawMessage{}}
	if s.opts.Status != nil {
		d.XDS = s.opts.Status()
	}
	if cfg := s.opts.Config(); cfg != nil {
		d.Versions = cfg.Versions
		types := make([]string, 0, len(cfg.Raw))
		for t := range cfg.Raw {
			types = append(types, t)
		}
		sort.Strings(types)
		for _, t := range types {
			out := map[string]json.RawMessage{}
			for name, m := range cfg.Raw[t] {
				b, err := protojson.Marshal(Redact(m))
				if err != nil {
					b, _ = json.Marshal(map[string]string{"error": err.Error()})
				}
				out[name] = b
			}
			d.Resources[t] = out
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(d)
}
