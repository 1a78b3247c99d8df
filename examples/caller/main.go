// Command caller is the Weft example client: GET /call?url=U&n=N&c=C makes N calls to U
// (C at a time) — through the pod's sidecar once injected: captured by weft-init's rules, or
// through $HTTP_PROXY with proxy-env interception — and answers with
// how many calls got each status and each X-Version, so the demo and the e2e tests can
// measure a traffic split, retries or a fault from inside the mesh; h=Name:Value adds headers
// to the calls (e.g. Prefer: respond-async). POST /callback records async results (an
// X-Callback-Url target) and GET /callbacks counts them. It listens on $PORT (default 8080).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Tally is the answer to /call.
type Tally struct {
	URL       string         `json:"url"`
	Total     int            `json:"total"`
	ByStatus  map[string]int `json:"byStatus"`
	ByVersion map[string]int `json:"byVersion"`
	Errors    int            `json:"errors"`
	// ColdStarts counts answers that carried X-Weft-Cold-Start (the caller's sidecar held the
	// call while the function scaled from zero); MaxColdStart is the longest such hold and
	// MaxLatency the slowest call, both in seconds.
	ColdStarts   int     `json:"coldStarts"`
	MaxColdStart float64 `json:"maxColdStartSeconds"`
	MaxLatency   float64 `json:"maxLatencySeconds"`
	LastError    string  `json:"lastError,omitempty"`
	LastBody     string  `json:"lastBody,omitempty"`
}

// callbacks records the results async calls POST back (X-Callback-Url), by X-Function-Status.
type callbacks struct {
	mu       sync.Mutex
	byStatus map[string]int
	ids      map[string]bool
	// byVersion counts the callbacks whose body is an echo reply, by its "version" (which
	// revision ran the call).
	byVersion map[string]int
}

func (cb *callbacks) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var reply struct {
		Version string `json:"version"`
	}
	_ = json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&reply)
	cb.mu.Lock()
	cb.byStatus[r.Header.Get("X-Function-Status")]++
	cb.ids[r.Header.Get("X-Call-Id")] = true
	if reply.Version != "" {
		cb.byVersion[reply.Version]++
	}
	cb.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func call(client *http.Client, url string, n, c int, headers http.Header) Tally {
	t := Tally{URL: url, Total: n, ByStatus: map[string]int{}, ByVersion: map[string]int{}}
	var mu sync.Mutex
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				start := time.Now()
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				for k, vv := range headers {
					req.Header[k] = vv
				}
				resp, err := client.Do(req)
				mu.Lock()
				t.MaxLatency = max(t.MaxLatency, time.Since(start).Seconds())
				if err != nil {
					t.Errors++
					t.LastError = err.Error()
					mu.Unlock()
					continue
				}
				mu.Unlock()
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				mu.Lock()
				t.ByStatus[strconv.Itoa(resp.StatusCode)]++
				if v := resp.Header.Get("X-Version"); v != "" {
					t.ByVersion[v]++
				}
				if v := resp.Header.Get("X-Weft-Cold-Start"); v != "" {
					t.ColdStarts++
					if secs, err := strconv.ParseFloat(v, 64); err == nil {
						t.MaxColdStart = max(t.MaxColdStart, secs)
					}
				}
				if resp.StatusCode >= 400 {
					t.LastBody = string(body)
				}
				mu.Unlock()
			}
		}()
	}
	for range n {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	return t
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	// With iptables capture there is no proxy setting and the calls go out as to any server
	// (the sidecar takes them); with proxy-env, ProxyFromEnvironment sends them to $HTTP_PROXY.
	client := &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 64}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		url := q.Get("url")
		n, err1 := strconv.Atoi(q.Get("n"))
		c, err2 := strconv.Atoi(q.Get("c"))
		if url == "" || err1 != nil || n < 1 || n > 100000 {
			http.Error(w, "usage: /call?url=http://reviews:9080/&n=100[&c=10][&h=Name:Value][&format=kv]\n", http.StatusBadRequest)
			return
		}
		if err2 != nil || c < 1 {
			c = 10
		}
		headers := http.Header{}
		for _, h := range q["h"] { // h=Name:Value, repeatable
			if k, v, ok := strings.Cut(h, ":"); ok {
				headers.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
		t := call(client, url, n, min(c, n), headers)
		if q.Get("format") == "kv" { // for shell scripts without jq
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "total %d\nerrors %d\n", t.Total, t.Errors)
			fmt.Fprintf(w, "coldstarts %d\nmax_cold_start %.3f\nmax_latency %.3f\n", t.ColdStarts, t.MaxColdStart, t.MaxLatency)
			for k, v := range t.ByStatus {
				fmt.Fprintf(w, "status.%s %d\n", k, v)
			}
			for k, v := range t.ByVersion {
				fmt.Fprintf(w, "version.%s %d\n", k, v)
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(t)
	})
	cb := &callbacks{byStatus: map[string]int{}, ids: map[string]bool{}, byVersion: map[string]int{}}
	mux.Handle("POST /callback", cb)
	mux.HandleFunc("GET /callbacks", func(w http.ResponseWriter, _ *http.Request) {
		cb.mu.Lock()
		defer cb.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"byStatus": cb.byStatus, "distinctCalls": len(cb.ids), "byVersion": cb.byVersion})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("caller listening on %s (proxy %q)", srv.Addr, os.Getenv("HTTP_PROXY"))
	log.Fatal(srv.ListenAndServe())
}
