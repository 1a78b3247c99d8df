// Command grpcecho is the Weft gRPC example: a server of grpc-go's health service
// (grpc.health.v1.Health) that names itself in a trailer, and a client that calls it
// through the mesh. The server listens on $PORT (default 8080):
//
//	grpcecho serve
//	grpcecho call -target reviews:9090 [-via 127.0.0.1:15001] [-n 10]
//
// call makes n unary Check calls and one Watch stream and prints each answer's status
// and the x-served-by trailer. -via dials that address (the caller's sidecar) with
// :authority set to -target, for apps that reach the mesh through the sidecar's
// listener rather than by capture; grpc-go's own proxy support uses CONNECT, which the
// sidecar does not carry.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// server answers SERVING to Check and streams SERVING three times to Watch, with the
// pod's name ($POD_NAME) and version ($VERSION) in the x-served-by trailer.
type server struct {
	healthpb.UnimplementedHealthServer
	name string
}

func (s *server) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-served-by", s.name))
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (s *server) Watch(_ *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	for range 3 {
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
	}
	stream.SetTrailer(metadata.Pairs("x-served-by", s.name))
	return nil
}

func newServer(name string) *grpc.Server {
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, &server{name: name})
	return srv
}

// call makes n Check calls and one Watch through conn and writes what came back to w.
func call(ctx context.Context, conn *grpc.ClientConn, n int, w io.Writer) error {
	hc := healthpb.NewHealthClient(conn)
	for i := range n {
		var tr metadata.MD
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Trailer(&tr))
		if err != nil {
			return fmt.Errorf("check %d: %w", i, err)
		}
		fmt.Fprintf(w, "check %d: %s served-by=%v\n", i, resp.Status, tr.Get("x-served-by"))
	}
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	got := 0
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		got++
	}
	fmt.Fprintf(w, "watch: %d updates served-by=%v\n", got, stream.Trailer().Get("x-served-by"))
	return nil
}

func main() {
	if len(os.Args) < 2 {
		log.Fatal("usage: grpcecho serve | call -target host:port [-via addr] [-n N]")
	}
	switch os.Args[1] {
	case "serve":
		port := os.Getenv("PORT")
		if port == "" {
			port = "8080"
		}
		ln, err := net.Listen("tcp", ":"+port)
		if err != nil {
			log.Fatal(err)
		}
		log.Printf("grpcecho %s listening on %s", os.Getenv("VERSION"), ln.Addr())
		log.Fatal(newServer(os.Getenv("POD_NAME") + "/" + os.Getenv("VERSION")).Serve(ln))
	case "call":
		fs := flag.NewFlagSet("call", flag.ExitOnError)
		target := fs.String("target", "", "host:port of the gRPC service")
		via := fs.String("via", "", "dial this address instead (the sidecar's listener), with :authority -target")
		n := fs.Int("n", 10, "unary calls")
		_ = fs.Parse(os.Args[2:])
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		addr := *target
		if *via != "" {
			addr = *via
			opts = append(opts, grpc.WithAuthority(*target))
		}
		conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
		if err != nil {
			log.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := call(ctx, conn, *n, os.Stdout); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("unknown command %q", os.Args[1])
	}
}
