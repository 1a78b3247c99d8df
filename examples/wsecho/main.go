// Command wsecho is the Weft WebSocket example: it accepts WebSocket sessions on any path
// and echoes every message (up to 16 MiB) back unchanged, so demos and tests can
// check that a session crosses the mesh intact. A text message "bye" makes it close the
// session with a normal closure. It listens on $PORT (default 8080); a plain GET of
// /healthz answers 200 for probes.
//
// `wsecho call -url ws://host:port/path [-n N] [-size B]` is the client: it opens a session,
// sends N text and binary messages (the binary ones B bytes of a pattern), checks each echo,
// says "bye" and expects the server's normal closure; it prints one line and exits 0 only if
// all of that happened.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
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

// call runs one session against url: n round trips alternating text and binary messages of
// size bytes, then "bye". It reports what it did on w.
func call(ctx context.Context, url string, n, size int, w io.Writer) error {
	c, resp, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return fmt.Errorf("dial %s: %w", url, err)
	}
	defer func() { _ = c.CloseNow() }()
	c.SetReadLimit(maxMessage)
	total := 0
	for i := range n {
		typ, msg := websocket.MessageText, []byte(fmt.Sprintf("hello %d", i))
		if i%2 == 1 {
			typ, msg = websocket.MessageBinary, make([]byte, size)
			for j := range msg {
				msg[j] = byte(i + j)
			}
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return fmt.Errorf("message %d: write: %w", i, err)
		}
		gt, got, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("message %d: read: %w", i, err)
		}
		if gt != typ || !bytes.Equal(got, msg) {
			return fmt.Errorf("message %d (%v, %d bytes) came back as %v, %d bytes", i, typ, len(msg), gt, len(got))
		}
		total += len(msg)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("bye")); err != nil {
		return fmt.Errorf("bye: %w", err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		return fmt.Errorf("after bye: %w, want the server's normal closure", err)
	}
	fmt.Fprintf(w, "websocket %s: %d messages echoed (%d bytes), upgrade %s, closed normally\n", url, n, total, resp.Status)
	return nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "call" {
		fs := flag.NewFlagSet("call", flag.ExitOnError)
		url := fs.String("url", "", "ws://host:port/path of a wsecho server")
		n := fs.Int("n", 4, "messages to send (text and binary alternately)")
		size := fs.Int("size", 64<<10, "bytes of each binary message (at most 16 MiB)")
		_ = fs.Parse(os.Args[2:])
		if *url == "" || *n < 1 || *size < 0 || *size > maxMessage {
			log.Fatal(errors.New("usage: wsecho call -url ws://host:port/path [-n N] [-size B]; size at most 16 MiB"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := call(ctx, *url, *n, *size, os.Stdout); err != nil {
			log.Fatal(err)
		}
		return
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	srv := &http.Server{Addr: ":" + port, Handler: handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Printf("wsecho listening on %s", srv.Addr)
	log.Fatal(srv.ListenAndServe())
}
