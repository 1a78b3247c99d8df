package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestCallReportsEveryAnswerAndWhoServedIt(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer("reviews-abc/v2")
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out strings.Builder
	if err := call(ctx, conn, 2, &out); err != nil {
		t.Fatal(err)
	}
	want := "check 0: SERVING served-by=[reviews-abc/v2]\ncheck 1: SERVING served-by=[reviews-abc/v2]\nwatch: 3 updates served-by=[reviews-abc/v2]\n"
	if out.String() != want {
		t.Errorf("call printed\n%s\nwant\n%s", out.String(), want)
	}
}
