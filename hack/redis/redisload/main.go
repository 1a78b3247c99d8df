// Command redisload drives the Redis loads of hack/redis/bench-limits.sh that
// redis-benchmark cannot: a pipeline written whole before any reply is read
// (as redis-py's pipeline.execute() does), and SET/GET of very large values.
// Every run is bounded by -timeout, so a proxy that stalls fails the run
// instead of hanging it.
//
//	redisload -addr 127.0.0.1:22121 -mode pipeline -n 100000
//	redisload -addr 127.0.0.1:22121 -mode bigvalue -size 64000000 -keys big:a,big:b,big:c
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"strings"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:22121", "Redis or proxy address")
	mode := flag.String("mode", "pipeline", "pipeline or bigvalue")
	n := flag.Int("n", 100_000, "pipeline: commands (about 500 bytes each)")
	size := flag.Int("size", 64_000_000, "bigvalue: bytes per value")
	keys := flag.String("keys", "big:a,big:b,big:c", "bigvalue: comma-separated keys")
	timeout := flag.Duration("timeout", 120*time.Second, "bound on the whole run")
	flag.Parse()

	c, err := net.Dial("tcp", *addr)
	if err != nil {
		log.Fatalf("dialing %s: %v", *addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(*timeout)); err != nil {
		log.Fatal(err)
	}
	rd := resp.NewReader(c)
	switch *mode {
	case "pipeline":
		pipeline(c, rd, *n)
	case "bigvalue":
		bigValues(c, rd, *size, strings.Split(*keys, ","))
	default:
		log.Fatalf("mode %q: want pipeline or bigvalue", *mode)
	}
}

// pipeline writes n commands of about 500 bytes in one write — SETs, with
// every tenth a GET of the key just set, so the replies (~5 MB) are more
// than socket buffers hold — then reads and checks every reply, and prints
// the seconds from the first byte written to the last reply read.
func pipeline(c net.Conn, rd *resp.Reader, n int) {
	pad := strings.Repeat("v", 480)
	var b []byte
	want := make([]string, 0, n)
	for i := range n {
		if i%10 == 9 {
			b = resp.AppendCommand(b, []byte("GET"), fmt.Appendf(nil, "pipe:%d", i-1))
			v := fmt.Sprintf("%d:%s", i-1, pad)
			want = append(want, fmt.Sprintf("$%d\r\n%s\r\n", len(v), v))
			continue
		}
		b = resp.AppendCommand(b, []byte("SET"), fmt.Appendf(nil, "pipe:%d", i), fmt.Appendf(nil, "%d:%s", i, pad))
		want = append(want, "+OK\r\n")
	}
	start := time.Now()
	if _, err := c.Write(b); err != nil {
		log.Fatalf("writing %d bytes of pipeline before reading: %v", len(b), err)
	}
	for i, w := range want {
		raw, err := rd.ReadReply()
		if err != nil {
			log.Fatalf("reply %d of %d: %v", i, n, err)
		}
		if string(raw) != w {
			log.Fatalf("reply %d: %.80q, want %.80q", i, raw, w)
		}
	}
	fmt.Printf("%.3f\n", time.Since(start).Seconds())
}

// bigValues SETs then GETs a size-byte value under each key, checking it
// comes back whole, and prints the seconds taken.
func bigValues(c net.Conn, rd *resp.Reader, size int, keys []string) {
	val := bytes.Repeat([]byte("x"), size)
	start := time.Now()
	for _, k := range keys {
		if _, err := c.Write(resp.AppendCommand(nil, []byte("SET"), []byte(k), val)); err != nil {
			log.Fatalf("SET %s: %v", k, err)
		}
		if raw, err := rd.ReadReply(); err != nil || string(raw) != "+OK\r\n" {
			log.Fatalf("SET %s: %.80q %v", k, raw, err)
		}
		if _, err := c.Write(resp.AppendCommand(nil, []byte("GET"), []byte(k))); err != nil {
			log.Fatalf("GET %s: %v", k, err)
		}
		raw, err := rd.ReadReply()
		if err != nil || len(raw) < size || !bytes.Equal(raw[len(raw)-size-2:len(raw)-2], val) {
			log.Fatalf("GET %s: %d bytes back, %v", k, len(raw), err)
		}
	}
	fmt.Printf("%.3f\n", time.Since(start).Seconds())
}
