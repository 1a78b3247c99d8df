package xdsclient

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/contract"
)

// The token file is read again for every stream, so the kubelet's rotation reaches the
// next stream; an empty, missing or oversized file fails the call instead of sending
// something else.
func TestTokenFileIsReadForEveryStream(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	creds := tokenFileCreds(path)
	if !creds.RequireTransportSecurity() {
		t.Fatal("the token may travel in clear")
	}
	if _, err := creds.GetRequestMetadata(context.Background()); err == nil {
		t.Fatal("a missing token file gave metadata")
	}
	for _, tok := range []string{"first", "rotated"} {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		md, err := creds.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := md[contract.AuthorizationHeader]; got != "Bearer "+tok {
			t.Fatalf("metadata = %q, want Bearer %s", got, tok)
		}
	}
	for name, content := range map[string]string{"empty": " \n", "oversized": strings.Repeat("a", maxTokenBytes+1)} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := creds.GetRequestMetadata(context.Background()); err == nil {
			t.Errorf("%s token file gave metadata", name)
		}
	}
}

// Without a CA bundle the sidecar speaks plaintext and sends no token; a CA file that holds
// no certificate is an error, not a silent fall-back to plaintext.
func TestCredentialsModes(t *testing.T) {
	dir := t.TempDir()
	opts, secure, err := Credentials(filepath.Join(dir, "none"), filepath.Join(dir, "token"))
	if err != nil || secure || len(opts) != 1 {
		t.Fatalf("missing CA: %d options, secure %v, %v; want plaintext", len(opts), secure, err)
	}
	bad := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(bad, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Credentials(bad, filepath.Join(dir, "token")); err == nil {
		t.Fatal("a CA file without a certificate was accepted")
	}
}
