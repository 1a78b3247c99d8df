package connio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-done
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A request/response exchange where each message arrives only after the previous one
// was handled: the case where ReadLoop skips the read that would say EAGAIN. If it ever
// skipped a read with data queued, the exchange would stall and the deadline would end it.
func TestReadLoopPingPong(t *testing.T) {
	cl, srv := pair(t)
	_ = srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	const rounds = 2000
	go func() {
		buf := make([]byte, 16)
		for i := 0; i < rounds; i++ {
			if _, err := cl.Write([]byte("ping\n")); err != nil {
				return
			}
			if _, err := io.ReadFull(cl, buf[:5]); err != nil {
				return
			}
		}
		cl.Close()
	}()
	buf := make([]byte, 64)
	var pending []byte
	got := 0
	err := ReadLoop(srv, func() []byte { return buf }, func(n int) bool {
		pending = append(pending, buf[:n]...)
		for {
			i := bytes.IndexByte(pending, '\n')
			if i < 0 {
				return false
			}
			pending = pending[i+1:]
			got++
			if _, err := srv.Write([]byte("pong\n")); err != nil {
				t.Errorf("writing pong: %v", err)
				return true
			}
		}
	})
	if !errors.Is(err, io.EOF) {
		t.Fatalf("ReadLoop = %v, want io.EOF after the peer closed", err)
	}
	if got != rounds {
		t.Fatalf("handled %d messages, want %d", got, rounds)
	}
}

// Data larger than the space offered arrives in several reads, all of it delivered.
func TestReadLoopFullReadsAndStop(t *testing.T) {
	cl, srv := pair(t)
	payload := bytes.Repeat([]byte("0123456789"), 10_000)
	go func() { _, _ = cl.Write(payload) }()
	buf := make([]byte, 1000)
	var got []byte
	err := ReadLoop(srv, func() []byte { return buf }, func(n int) bool {
		got = append(got, buf[:n]...)
		return len(got) >= len(payload)
	})
	if err != nil {
		t.Fatalf("ReadLoop = %v, want nil when handle stops it", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes, want the %d written, in order", len(got), len(payload))
	}
}

func TestReadLoopDeadlineAndClose(t *testing.T) {
	_, srv := pair(t)
	_ = srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	err := ReadLoop(srv, func() []byte { return buf }, func(int) bool { return false })
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadLoop = %v, want a deadline error", err)
	}
	_ = srv.SetReadDeadline(time.Time{})
	go func() { time.Sleep(20 * time.Millisecond); srv.Close() }()
	err = ReadLoop(srv, func() []byte { return buf }, func(int) bool { return false })
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadLoop = %v, want net.ErrClosed after Close", err)
	}
}

// net.Pipe has no descriptor: the same contract over c.Read.
func TestReadLoopWithoutDescriptor(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() { _, _ = a.Write([]byte("hello")); a.Close() }()
	buf := make([]byte, 2)
	var got []byte
	err := ReadLoop(b, func() []byte { return buf }, func(n int) bool { got = append(got, buf[:n]...); return false })
	if !errors.Is(err, io.EOF) || string(got) != "hello" {
		t.Fatalf("ReadLoop = %v with %q, want io.EOF with \"hello\"", err, got)
	}
}

// TryWrite takes what the socket can hold and says so; WriteAll waits for the reader.
func TestTryWriteAndWriteAll(t *testing.T) {
	cl, srv := pair(t)
	big := bytes.Repeat([]byte("x"), 64<<20) // far more than loopback socket buffers
	w := NewWriter(srv)
	n, err := w.TryWrite(big)
	if err != nil || n <= 0 || n >= len(big) {
		t.Fatalf("TryWrite = %d, %v; want a partial write with no error", n, err)
	}
	n2, err := w.TryWrite(big[n:])
	if err != nil || n2 != 0 {
		t.Fatalf("TryWrite on a full socket = %d, %v; want 0, nil", n2, err)
	}
	total := make(chan int)
	go func() {
		m, _ := io.Copy(io.Discard, cl)
		total <- int(m)
	}()
	if err := w.WriteAll(big[n:]); err != nil {
		t.Fatalf("WriteAll: %v", err)
	}
	srv.Close()
	if got := <-total; got != len(big) {
		t.Fatalf("reader got %d bytes, want %d", got, len(big))
	}
	if _, err := w.TryWrite([]byte("x")); err == nil {
		t.Fatal("TryWrite on a closed connection succeeded")
	}
}
