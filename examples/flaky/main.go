// Command flaky is the Weft example for retries and outlier detection: it answers like
// echo, except that a share of requests ($FAIL_RATE, 0–1, default 0) or every request
// (after POST /fail, until POST /recover) gets a 500. Failing on demand lets a test turn
// a healthy pod bad and watch the mesh route around it. It listens on $PORT (default 8080).
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

type server struct {
	version, pod string
	rate         float64
	failing      atomic.Bool
	rand         func() float64
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/fail":
		s.failing.Store(true)
		fmt.Fprintln(w, "failing every request until POST /recover")
		return
	case r.Method == http.MethodPost && r.URL.Path == "/recover":
		s.failing.Store(false)
		fmt.Fprintln(w, "recovered")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Version", s.version)
	status := http.StatusOK
	if s.failing.Load() || s.rand() < s.rate {
		status = http.StatusInternalServerError
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"version": s.version, "pod": s.pod, "status": status, "path": r.URL.Path})
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	s := &server{version: os.Getenv("VERSION"), pod: os.Getenv("POD_NAME"), rand: rand.Float64}
	if v := os.Getenv("FAIL_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || r > 1 {
			log.Fatalf("FAIL_RATE=%q: want a share between 0 and 1, e.g. 0.5", v)
		}
		s.rate = r
	}
	s.failing.Store(os.Getenv("FAIL") == "true")
	srv := &http.Server{Addr: ":" + port, Handler: s, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("flaky listening on %s (fail rate %.2f, failing %v)", srv.Addr, s.rate, s.failing.Load())
	log.Fatal(srv.ListenAndServe())
}
