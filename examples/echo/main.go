// Command echo is the Weft example workload: it answers every request with a JSON
// document naming itself (VERSION, POD_NAME) and echoing the request's method, path and
// headers, so demos and tests can see which pod and version served a call and what the
// mesh changed on the way. It listens on $PORT (default 8080).
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
	"time"
)

// Reply is what echo answers; other examples and tests decode it.
type Reply struct {
	Version string              `json:"version"`
	Pod     string              `json:"pod"`
	Method  string              `json:"method"`
	Host    string              `json:"host"`
	Path    string              `json:"path"`
	Query   string              `json:"query,omitempty"`
	Headers map[string][]string `json:"headers"`
}

func handler(version, pod string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Version", version)
		_ = json.NewEncoder(w).Encode(Reply{Version: version, Pod: pod, Method: r.Method, Host: r.Host,
			Path: r.URL.Path, Query: r.URL.RawQuery, Headers: r.Header})
	})
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	srv := &http.Server{Addr: ":" + port, Handler: handler(os.Getenv("VERSION"), os.Getenv("POD_NAME")),
		ReadHeaderTimeout: 10 * time.Second}
	log.Printf("echo %s listening on %s", os.Getenv("VERSION"), srv.Addr)
	log.Fatal(srv.ListenAndServe())
}
