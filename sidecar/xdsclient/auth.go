package xdsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/contract"
)

// maxTokenBytes bounds the token file read on every stream and call.
const maxTokenBytes = 16 << 10

// Credentials are the dial options that authenticate the sidecar to the control plane
// (docs/zero-trust.md): TLS verified against the CA bundle in caFile, the server named
// contract.XDSServerName whatever address is dialled, and the projected ServiceAccount
// token in tokenFile as "authorization: Bearer <token>" on every stream and call. The token
// file is read again each time, so the kubelet's rotation is picked up by the next stream.
//
// Without a CA bundle (the file does not exist: a pod rendered for a control plane run with
// --xds-insecure) it returns plaintext options and secure=false: then no token is sent,
// since it would cross the network in clear, and a secure control plane refuses the stream.
func Credentials(caFile, tokenFile string) (opts []grpc.DialOption, secure bool, err error) {
	pem, err := os.ReadFile(caFile)
	if errors.Is(err, fs.ErrNotExist) {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading the control plane's CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, false, fmt.Errorf("control plane CA bundle %s holds no PEM certificate", caFile)
	}
	tc := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: contract.XDSServerName, MinVersion: tls.VersionTLS12})
	return []grpc.DialOption{grpc.WithTransportCredentials(tc), grpc.WithPerRPCCredentials(tokenFileCreds(tokenFile))}, true, nil
}

// tokenFileCreds sends the token file's content as a bearer token.
type tokenFileCreds string

// GetRequestMetadata reads the token; a missing or empty file fails the call (the stream is
// retried with back-off until the kubelet has written it).
func (f tokenFileCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := readBounded(string(f), maxTokenBytes)
	if err != nil {
		return nil, fmt.Errorf("reading the ServiceAccount token for the control plane: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("ServiceAccount token file %s is empty", string(f))
	}
	return map[string]string{contract.AuthorizationHeader: contract.BearerPrefix + tok}, nil
}

// RequireTransportSecurity is true: the token never travels in clear.
func (tokenFileCreds) RequireTransportSecurity() bool { return true }

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, limit+1)
	n, err := f.Read(b)
	if err != nil && n == 0 {
		return nil, err
	}
	if int64(n) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b[:n], nil
}
