// Command slow is the Weft example for timeouts: it sleeps ?ms= milliseconds (default
// $DELAY_MS, else 0) before answering, so tests can make a call outlast a route timeout.
// The sleep ends early when the caller gives up. It listens on $PORT (default 8080).
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"
)

func handler(defaultDelay time.Duration, pod string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := defaultDelay
		if v := r.URL.Query().Get("ms"); v != "" {
			ms, err := strconv.Atoi(v)
			if err != nil || ms < 0 {
				http.Error(w, "ms must be a non-negative integer number of milliseconds, e.g. ?ms=250\n", http.StatusBadRequest)
				return
			}
			d = time.Duration(ms) * time.Millisecond
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(w, "{\"pod\":%q,\"sleptMs\":%d}\n", pod, d.Milliseconds())
	})
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	ms, _ := strconv.Atoi(os.Getenv("DELAY_MS"))
	srv := &http.Server{Addr: ":" + port, Handler: handler(time.Duration(ms)*time.Millisecond, os.Getenv("POD_NAME")),
		ReadHeaderTimeout: 10 * time.Second}
	log.Printf("slow listening on %s", srv.Addr)
	log.Fatal(srv.ListenAndServe())
}
