package capture

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A TCP connection with no byte either way for the idle timeout is closed; one whose
// other direction keeps moving is not.
func TestTCPIdleTimeout(t *testing.T) {
	// The server echoes, and on "tick" sends a byte every 50 ms for 600 ms.
	srv := tcpServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "tick\n" {
				for range 12 {
					time.Sleep(50 * time.Millisecond)
					if _, err := c.Write([]byte(".")); err != nil {
						return
					}
				}
				_, _ = c.Write([]byte("\n"))
				continue
			}
			_, _ = c.Write([]byte(line))
		}
	})
	s := startSidecar(t, mesh{redis: srv, idle: 300 * time.Millisecond}, false, 0)
	front := s.front(t, "10.96.0.30:6379")

	busy, _ := net.Dial("tcp", front)
	defer busy.Close()
	_, _ = busy.Write([]byte("tick\n")) // the caller then says nothing for 600 ms
	_ = busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := bufio.NewReader(busy).ReadString('\n'); err != nil || got != strings.Repeat(".", 12)+"\n" {
		t.Fatalf("a connection busy one way was cut: %q %v", got, err)
	}

	idle, _ := net.Dial("tcp", front)
	defer idle.Close()
	_, _ = idle.Write([]byte("hi\n"))
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(idle)
	if got, _ := br.ReadString('\n'); got != "hi\n" {
		t.Fatalf("echo %q", got)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("read a byte from an idle connection")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("idle connection closed after %v, want about 300ms", el)
	}
	busy.Close() // idle too by now; its count would race with this one's
	time.Sleep(50 * time.Millisecond)
	if st := stats(s); !strings.Contains(st, `weft_tcp_idle_timeouts_total{cluster="outbound|6379||redis.default.svc.cluster.local"} 1`) &&
		!strings.Contains(st, `weft_tcp_idle_timeouts_total{cluster="outbound|6379||redis.default.svc.cluster.local"} 2`) {
		t.Errorf("idle timeout not counted:\n%s", grep(st, "idle"))
	}
}

// The listener's connection cap holds for captured TCP connections: beyond it a new one is
// closed at once and counted.
func TestTCPConnectionCap(t *testing.T) {
	echo := tcpServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	s := startSidecar(t, mesh{redis: echo, maxConns: 2}, false, 0)
	front := s.front(t, "10.96.0.30:6379")
	var held []net.Conn
	for range 2 {
		c, _ := net.Dial("tcp", front)
		defer c.Close()
		_, _ = c.Write([]byte("x\n"))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if l, _ := bufio.NewReader(c).ReadString('\n'); l != "x\n" {
			t.Fatalf("held connection: %q", l)
		}
		held = append(held, c)
	}
	c, _ := net.Dial("tcp", front)
	defer c.Close()
	_, _ = c.Write([]byte("x\n"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 4)); err == nil {
		t.Fatalf("third connection got %d bytes, want it closed", n)
	}
	if st := stats(s); !strings.Contains(st, "weft_capture_connections_overflow_total 1") {
		t.Errorf("overflow not counted:\n%s", grep(st, "overflow"))
	}
	held[0].Close()
	time.Sleep(100 * time.Millisecond)
	c4, _ := net.Dial("tcp", front)
	defer c4.Close()
	_, _ = c4.Write([]byte("y\n"))
	_ = c4.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, _ := bufio.NewReader(c4).ReadString('\n'); l != "y\n" {
		t.Fatalf("after one closed, a new connection: %q", l)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in            string
		http, decided bool
	}{
		{"GET / HTTP/1.1\r\n", true, true},
		{"GE", false, false},
		{"POST ", true, true},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true, true},
		{"PRI * HTTP/2", false, false},
		{"GETX", false, true},
		{"\x16\x03\x01", false, true},
		{"*1\r\n$4\r\nPING\r\n", false, true},
		{"", false, false},
	} {
		h, d := classify([]byte(tc.in))
		if h != tc.http || d != tc.decided {
			t.Errorf("classify(%q) = %v,%v want %v,%v", tc.in, h, d, tc.http, tc.decided)
		}
	}
}

// serverName reads the SNI of a ClientHello crypto/tls writes, and nothing from other bytes.
func TestServerName(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: "api.partner.example", InsecureSkipVerify: true})
		_ = c.Handshake()
	}()
	buf := make([]byte, 4096)
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if got := serverName(buf[:n]); got != "api.partner.example" {
		t.Fatalf("SNI %q", got)
	}
	for _, bad := range [][]byte{nil, []byte("GET / HTTP/1.1"), buf[:10], {22, 3, 1, 0, 5, 1, 0, 0, 1}} {
		if got := serverName(bad); got != "" {
			t.Errorf("serverName(%q) = %q", bad, got)
		}
	}
}
