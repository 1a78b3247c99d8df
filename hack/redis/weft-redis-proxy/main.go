// Command weft-redis-proxy runs the sidecar's Redis sharding proxy with a
// static configuration, for benchmarks (hack/bench-redis.sh) and manual
// testing without a control plane.
//
//	weft-redis-proxy -listen 127.0.0.1:22121 \
//	    -servers shard-a=127.0.0.1:7001:1,shard-b=127.0.0.1:7002:1
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:22121", "address to serve clients on")
	servers := flag.String("servers", "", "comma-separated name=host:port[:weight]")
	dist := flag.String("distribution", "ketama", "ketama, modula or random")
	hash := flag.String("hash", "fnv1a_64", "twemproxy hash function")
	tag := flag.String("hash-tag", "", "two-character hash tag, e.g. {}")
	conns := flag.Int("server-connections", 1, "pipelined connections per server")
	timeout := flag.Duration("op-timeout", 0, "per-operation timeout (0: none)")
	admin := flag.String("admin", "", "address for /metrics and /debug/pprof (empty: off)")
	outLimit := flag.Int64("client-output-limit", redisproxy.DefaultClientOutputLimit, "bytes of unread replies held per client before it is closed")
	threads := flag.Int("concurrency", 1, "worker threads (GOMAXPROCS), as the sidecar's --concurrency; 0: one per CPU")
	flag.Parse()
	if *threads > 0 {
		runtime.GOMAXPROCS(*threads)
	}

	pl := redisproxy.Pool{Distribution: ring.Distribution(*dist), Hash: *hash, HashTag: *tag}
	for _, s := range strings.Split(*servers, ",") {
		name, hostport, ok := strings.Cut(s, "=")
		if !ok {
			log.Fatalf("server %q: want name=host:port[:weight]", s)
		}
		w := uint32(1)
		if parts := strings.Split(hostport, ":"); len(parts) == 3 {
			n, err := strconv.Atoi(parts[2])
			if err != nil {
				log.Fatalf("server %q: weight: %v", s, err)
			}
			w, hostport = uint32(n), parts[0]+":"+parts[1]
		}
		pl.Servers = append(pl.Servers, redisproxy.Server{Name: name, Addr: hostport, Weight: w})
	}
	cfg := redisproxy.Config{OpTimeout: *timeout, CatchAll: "pool", Pools: map[string]redisproxy.Pool{"pool": pl}, ConnsPerServer: *conns, ClientOutputLimit: *outLimit}
	p, err := redisproxy.New(cfg)
	if err != nil {
		log.Fatalf("configuring the proxy: %v", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listening: %v", err)
	}
	if *admin != "" {
		http.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) { _ = p.WritePrometheus(w) })
		go func() { log.Println(http.ListenAndServe(*admin, nil)) }()
	}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		<-ch
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	}()
	fmt.Fprintf(os.Stderr, "weft-redis-proxy serving %s over %d servers\n", ln.Addr(), len(pl.Servers))
	if err := p.Serve(ln); err != nil {
		log.Fatal(err)
	}
}
