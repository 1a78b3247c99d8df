// Command otlpsink is a minimal OpenTelemetry trace receiver for demos and tests: it takes
// OTLP/HTTP JSON (POST /v1/traces, what Weft's sidecars export), keeps the newest spans in
// memory, and prints a trace as an indented tree (GET /trace?span=<name>: the newest trace
// that has a span of that name). It is not a collector: nothing is stored on disk, and it
// holds at most maxSpans spans. It listens on $PORT (default 4318, OTLP/HTTP's port).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	maxBody  = 4 << 20 // one export request
	maxSpans = 4096    // the newest spans kept, over all traces
)

// Span is the part of an OTLP span the sink keeps.
type Span struct {
	TraceID, SpanID, Parent string
	Name, Service           string
	Kind                    int
	Start, End              time.Time
	Attrs                   map[string]string
}

// exportRequest is OTLP's ExportTraceServiceRequest in its JSON encoding (the fields read).
type exportRequest struct {
	ResourceSpans []struct {
		Resource struct {
			Attributes []attribute `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []struct {
			Spans []struct {
				TraceID      string      `json:"traceId"`
				SpanID       string      `json:"spanId"`
				ParentSpanID string      `json:"parentSpanId"`
				Name         string      `json:"name"`
				Kind         int         `json:"kind"`
				Start        string      `json:"startTimeUnixNano"`
				End          string      `json:"endTimeUnixNano"`
				Attributes   []attribute `json:"attributes"`
			} `json:"spans"`
		} `json:"scopeSpans"`
	} `json:"resourceSpans"`
}

type attribute struct {
	Key   string `json:"key"`
	Value struct {
		String *string          `json:"stringValue"`
		Int    *json.RawMessage `json:"intValue"`
	} `json:"value"`
}

func (a attribute) text() string {
	switch {
	case a.Value.String != nil:
		return *a.Value.String
	case a.Value.Int != nil:
		return strings.Trim(string(*a.Value.Int), `"`)
	}
	return ""
}

// Store keeps the newest maxSpans spans.
type Store struct {
	mu    sync.Mutex
	spans []Span
}

// Add decodes one export request and keeps its spans.
func (s *Store) Add(body []byte) (int, error) {
	var req exportRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return 0, fmt.Errorf("not an OTLP/HTTP JSON trace export: %w", err)
	}
	var got []Span
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, a := range rs.Resource.Attributes {
			if a.Key == "service.name" {
				service = a.text()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				if len(sp.TraceID) != 32 || len(sp.SpanID) != 16 {
					return 0, fmt.Errorf("span %q: traceId must be 32 hex digits and spanId 16", sp.Name)
				}
				attrs := map[string]string{}
				for _, a := range sp.Attributes {
					attrs[a.Key] = a.text()
				}
				got = append(got, Span{TraceID: sp.TraceID, SpanID: sp.SpanID, Parent: sp.ParentSpanID, Name: sp.Name,
					Service: service, Kind: sp.Kind, Start: unixNano(sp.Start), End: unixNano(sp.End), Attrs: attrs})
			}
		}
	}
	s.mu.Lock()
	s.spans = append(s.spans, got...)
	if n := len(s.spans); n > maxSpans {
		s.spans = append(s.spans[:0:0], s.spans[n-maxSpans:]...)
	}
	s.mu.Unlock()
	return len(got), nil
}

func unixNano(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Trace returns the spans of the newest trace that has a span named name.
func (s *Store) Trace(name string) []Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := ""
	for i := len(s.spans) - 1; i >= 0 && id == ""; i-- {
		if s.spans[i].Name == name {
			id = s.spans[i].TraceID
		}
	}
	var out []Span
	for _, sp := range s.spans {
		if id != "" && sp.TraceID == id {
			out = append(out, sp)
		}
	}
	return out
}

var kinds = map[int]string{1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}

// Tree renders spans as an indented tree, children under their parent in start order;
// a span whose parent is not among them is a root.
func Tree(spans []Span) string {
	byID := map[string]bool{}
	for _, sp := range spans {
		byID[sp.SpanID] = true
	}
	children := map[string][]Span{}
	for _, sp := range spans {
		p := sp.Parent
		if !byID[p] {
			p = ""
		}
		children[p] = append(children[p], sp)
	}
	var b strings.Builder
	if len(spans) > 0 {
		fmt.Fprintf(&b, "trace %s\n", spans[0].TraceID)
	}
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		cs := children[parent]
		sort.Slice(cs, func(i, j int) bool { return cs[i].Start.Before(cs[j].Start) })
		for _, sp := range cs {
			keys := make([]string, 0, len(sp.Attrs))
			for k := range sp.Attrs {
				if k == "http.response.status_code" || k == "weft.upstream_cluster" {
					keys = append(keys, k+"="+sp.Attrs[k])
				}
			}
			sort.Strings(keys)
			fmt.Fprintf(&b, "%s%s [%s, %s] %s %s\n", strings.Repeat("  ", depth+1), sp.Name, sp.Service,
				kinds[sp.Kind], sp.End.Sub(sp.Start).Round(time.Millisecond), strings.Join(keys, " "))
			walk(sp.SpanID, depth+1)
		}
	}
	walk("", 0)
	return b.String()
}

func handler(s *Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			http.Error(w, fmt.Sprintf("export request over %d bytes or unreadable: %v", maxBody, err), http.StatusRequestEntityTooLarge)
			return
		}
		if _, err := s.Add(body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
	})
	mux.HandleFunc("GET /trace", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("span")
		spans := s.Trace(name)
		if len(spans) == 0 {
			http.Error(w, fmt.Sprintf("no trace with a span named %q yet", name), http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, Tree(spans))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return mux
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "4318"
	}
	srv := &http.Server{Addr: ":" + port, Handler: handler(&Store{}), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute}
	log.Printf("otlpsink listening on :%s", port)
	log.Fatal(srv.ListenAndServe())
}
