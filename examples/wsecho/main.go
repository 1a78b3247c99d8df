// Command wsecho is the Weft WebSocket example: it accepts WebSocket sessions on any path
// and echoes every message (up to 16 MiB) back unchanged, so demos and tests can
// check that a session crosses the mesh intact. A text message "bye" makes it close the
// session with a normal closure. It listens on $PORT (default 8080); a plain GET of
// /healthz answers 200 for probes.
package main

import (
	"log"
	"net/http"
	"os"
	"time"

	"github.com/coder/websocket"
)

// maxMessage bounds one message the server reads (and so the memory a session holds).
const maxMessage = 16 << 20

func handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return // Accept answered the caller
		}
		defer func() { _ = c.CloseNow() }() // after a clean Close this only reports it was closed
		c.SetReadLimit(maxMessage)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if typ == websocket.MessageText && string(msg) == "bye" {
				_ = c.Close(websocket.StatusNormalClosure, "bye")
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	return mux
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	srv := &http.Server{Addr: ":" + port, Handler: handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Printf("wsecho listening on %s", srv.Addr)
	log.Fatal(srv.ListenAndServe())
}
