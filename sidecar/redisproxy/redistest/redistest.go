// Package redistest starts real redis-server and nutcracker processes on free
// loopback ports for tests, and offers a minimal RESP client that returns raw
// replies so tests can assert the exact bytes a client would see.
package redistest

import (
	"bytes"
	"fmt"
	// redistest is imported only by tests, never linked into the sidecar; testenv holds
	// the one rule (skip locally, fail under WEFT_CI) for a missing redis-server.
	"github.com/weftmesh/weft/internal/testenv" //nolint:depguard // test-only package
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// Server is one redis-server process owned by a test.
type Server struct {
	Addr string
	Port int
	dir  string
	args []string
	cmd  *exec.Cmd
	t    testing.TB
}

// RedisServerPath returns the redis-server binary or fails the test saying how
// to install it.
func RedisServerPath(t testing.TB) string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found in PATH: these tests need a real Redis; run `apt-get install -y redis-server` (CI installs it)")
	}
	return p
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// StartRedis starts n redis-servers without persistence, each in its own temp
// dir; extra args (e.g. "--requirepass", "s3cret") go to every server. They
// are killed when the test ends.
func StartRedis(t testing.TB, n int, extra ...string) []*Server {
	bin := RedisServerPath(t)
	out := make([]*Server, n)
	for i := range n {
		s := &Server{dir: t.TempDir(), t: t}
		s.Port = FreePort(t)
		s.Addr = "127.0.0.1:" + strconv.Itoa(s.Port)
		s.args = append([]string{"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", s.dir, "--daemonize", "no",
			"--logfile", filepath.Join(s.dir, "redis.log")}, extra...)
		s.start(bin)
		out[i] = s
		t.Cleanup(s.Kill)
	}
	return out
}

func (s *Server) start(bin string) {
	s.cmd = exec.Command(bin, s.args...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server on %s: %v", s.Addr, err)
	}
	WaitListening(s.t, s.Addr)
}

// Kill stops the server at once (SIGKILL), simulating a crashed shard.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_, _ = s.cmd.Process.Wait()
		s.cmd = nil
	}
}

// Restart starts a killed server again on the same port (empty dataset).
func (s *Server) Restart() {
	s.Kill()
	bin := RedisServerPath(s.t)
	s.start(bin)
}

// WaitListening waits up to 10 s for addr to accept connections.
func WaitListening(t testing.TB, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start listening within 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartNutcracker runs nutcracker with the given YAML config and waits until
// listen accepts connections; it skips the test when nutcracker is not
// installed.
func StartNutcracker(t testing.TB, yaml string, listen string) {
	bin, err := exec.LookPath("nutcracker")
	if err != nil {
		testenv.Missing(t, "nutcracker not installed: `apt-get install -y nutcracker` to compare placement with the real twemproxy")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "nutcracker.yml")
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf, "-s", strconv.Itoa(FreePort(t)), "-o", filepath.Join(dir, "nc.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting nutcracker: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	WaitListening(t, listen)
}

// Client is a minimal synchronous RESP client.
type Client struct {
	c net.Conn
	r *resp.Reader
}

// Dial connects to addr or fails the test.
func Dial(t testing.TB, addr string) *Client {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &Client{c: c, r: resp.NewReader(c)}
}

// Send writes commands without reading replies (for pipelining).
func (c *Client) Send(cmds ...[]string) error {
	var b []byte
	for _, cmd := range cmds {
		args := make([][]byte, len(cmd))
		for i, a := range cmd {
			args[i] = []byte(a)
		}
		b = resp.AppendCommand(b, args...)
	}
	_, err := c.c.Write(b)
	return err
}

// WriteRaw writes bytes as they are (inline commands, malformed input).
func (c *Client) WriteRaw(b string) error { _, err := c.c.Write([]byte(b)); return err }

// Read returns the next raw reply, waiting at most 10 s.
func (c *Client) Read() (string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw, err := c.r.ReadReply()
	return string(bytes.Clone(raw)), err
}

// Do sends one command and returns its raw reply.
func (c *Client) Do(args ...string) (string, error) {
	if err := c.Send(args); err != nil {
		return "", err
	}
	return c.Read()
}

// MustDo is Do that fails the test on an I/O error.
func (c *Client) MustDo(t testing.TB, args ...string) string {
	t.Helper()
	r, err := c.Do(args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return r
}

// Bulk is the raw reply for a bulk string.
func Bulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }
