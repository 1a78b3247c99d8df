package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestEchoesMessagesAndClosesOnBye(t *testing.T) {
	srv := httptest.NewServer(handler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(maxMessage)
	big := bytes.Repeat([]byte("x"), 2<<20)
	for _, m := range [][]byte{[]byte("hi"), big} {
		if err := c.Write(ctx, websocket.MessageBinary, m); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.Read(ctx); err != nil || !bytes.Equal(got, m) {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(m), len(got), err)
		}
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Errorf("after bye: %v, want a normal closure", err)
	}
}

// TestCallClient: the call mode completes a session against the server, and reports an
// echo that does not match (a server that answers with other bytes).
func TestCallClient(t *testing.T) {
	srv := httptest.NewServer(handler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/chat"
	if err := call(ctx, url, 4, 1<<20, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "4 messages echoed (2097166 bytes)") || !strings.Contains(out.String(), "closed normally") {
		t.Errorf("call output %q", out.String())
	}

	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		_, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		_ = c.Write(r.Context(), websocket.MessageText, append(msg, '!'))
	}))
	defer liar.Close()
	if err := call(ctx, "ws"+strings.TrimPrefix(liar.URL, "http")+"/", 2, 10, io.Discard); err == nil || !strings.Contains(err.Error(), "came back as") {
		t.Errorf("call against a server that alters the echo: %v, want a mismatch error", err)
	}
}
