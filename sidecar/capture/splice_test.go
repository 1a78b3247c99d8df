package capture

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// The TCP chain splices socket → pipe → socket (splicer). An echo server that starts
// reading only after 200 ms, while the client sends 24 MiB, fills the upstream socket:
// the splice out of the pipe meets EAGAIN and must wait and resume without losing or
// reordering a byte, both ways at once, and count every byte each way.
func TestSpliceBothWaysThroughAFullSocket(t *testing.T) {
	srv := tcpServer(t, func(c net.Conn) {
		time.Sleep(200 * time.Millisecond)
		_, _ = io.Copy(c, c) // echo until the client's half-close, then close
	})
	s := startSidecar(t, mesh{redis: srv}, false, 0)
	c, err := net.Dial("tcp", s.front(t, "10.96.0.30:6379"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 24<<20)
	_, _ = rand.Read(data)
	got := make(chan []byte, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	}()
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b := <-got
	if len(b) != len(data) || !bytes.Equal(b, data) {
		i := 0
		for i < min(len(b), len(data)) && b[i] == data[i] {
			i++
		}
		t.Fatalf("echo: %d bytes back of %d, first difference at %d (sha256 %x vs %x)", len(b), len(data), i, sha256.Sum256(b), sha256.Sum256(data))
	}
	const cl = `{cluster="outbound|6379||redis.default.svc.cluster.local"} 25165824`
	poll.Until(t, 5*time.Second, func() bool {
		st := stats(s)
		return strings.Contains(st, "weft_tcp_bytes_sent_total"+cl) && strings.Contains(st, "weft_tcp_bytes_received_total"+cl)
	}, "waiting for 24 MiB counted each way")
}
