package xds_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/xds"
)

// A manager run with --xds-insecure has no verified identity to certify: it issues
// nothing, whatever the CSR says.
func TestCertificateServiceRefusesWithoutAuthentication(t *testing.T) {
	root, err := ca.NewRoot(time.Now(), contract.DefaultTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	xds.RegisterCertificateServer(srv, ca.New(ca.Options{}, []*ca.Root{root}), xds.CertificateOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = conn.Invoke(ctx, contract.SignMethod, &contract.SignRequest{CSR: "x"}, &contract.SignResponse{}, grpc.CallContentSubtype(contract.SignalCodecName))
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("unauthenticated Sign = %v, want FailedPrecondition", err)
	}
}
