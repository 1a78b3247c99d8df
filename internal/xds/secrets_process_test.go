package xds

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// The real sidecar process (cmd/sidecar, built here) gets its Redis passwords over SDS and
// serves with them, and no password shows in its process arguments, its environment, its
// logs (before and after a rotation), its /config_dump or its /stats.
func TestSidecarProcessNeverShowsSecrets(t *testing.T) {
	const down1, up1, down2, up2 = "client-pw-proc-1", "server-pw-proc-1", "client-pw-proc-2", "server-pw-proc-2"
	bin := filepath.Join(t.TempDir(), "weft-sidecar")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/sidecar")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the sidecar: %v\n%s", err, out)
	}
	srv := redistest.StartRedis(t, 1, "--requirepass", up1)[0]
	redisPort := redistest.FreePort(t)
	in := func(down, up string) *snapshot.Input {
		i := redisPoolInput(srv.Addr, down, up)
		i.RedisProxies[0].Spec.Listener.Port = int32(redisPort)
		return i
	}
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, snapshot.Translate(in(down1, up1))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	adminAddr := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
	var logs lockedBuffer
	cmd := exec.Command(bin, "--xds-address", s.Addr().String(), "--xds-ca-file", filepath.Join(t.TempDir(), "none"),
		"--namespace", "default", "--pod", "productpage-7", "--labels", "app=productpage",
		"--admin-address", adminAddr, "--metrics-address", "127.0.0.1:"+strconv.Itoa(redistest.FreePort(t)))
	cmd.Env = append(os.Environ(), "WEFT_TEST=1")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	proxyAddr := "127.0.0.1:" + strconv.Itoa(redisPort)
	serves := func(pw string) func() bool {
		return func() bool {
			probe, err := net.DialTimeout("tcp", proxyAddr, time.Second)
			if err != nil {
				return false // not listening yet
			}
			probe.Close()
			cl := redistest.Dial(t, proxyAddr)
			r1, err1 := cl.Do("AUTH", pw)
			r2, err2 := cl.Do("SET", "k", pw)
			return err1 == nil && err2 == nil && strings.HasPrefix(r1, "+OK") && strings.HasPrefix(r2, "+OK")
		}
	}
	poll.Until(t, 20*time.Second, serves(down1), "the sidecar never served the pool with the client password it got over SDS")

	// Rotate both passwords (the server first) and wait for the sidecar to serve with them.
	admin := redistest.Dial(t, srv.Addr)
	expectReply(t, admin, "+OK", "AUTH", up1)
	expectReply(t, admin, "+OK", "CONFIG", "SET", "requirepass", up2)
	_, _ = admin.Do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
	if err := c.SetResult(ctx, snapshot.Translate(in(down2, up2))); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, serves(down2), "the sidecar never served with the rotated passwords")

	get := func(path string) string {
		resp, err := http.Get("http://" + adminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	places := map[string]string{"logs": logs.String(), "/config_dump": get("/config_dump"), "/stats": get("/stats")}
	for _, f := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/" + f)
		if err != nil {
			t.Fatal(err)
		}
		places["/proc/pid/"+f] = string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
	}
	if !strings.Contains(places["/config_dump"], "redis/default/cache/downstream") {
		t.Errorf("/config_dump does not list the SDS secrets:\n%s", places["/config_dump"])
	}
	for where, text := range places {
		for _, pw := range []string{down1, up1, down2, up2} {
			if strings.Contains(text, pw) || strings.Contains(text, base64.StdEncoding.EncodeToString([]byte(pw))) {
				t.Errorf("password %q shows in the sidecar's %s", pw, where)
			}
		}
	}
}
