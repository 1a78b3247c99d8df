package queue

import (
	"crypto/rand"
	"encoding/hex"
	"maps"
	"strings"
)

// TokenKey is the key, in the manager's Secret, of the embedded server's secret key from
// which every NATS user's password is derived (Credentials). It kept the name of the shared
// token it replaces, so an existing Secret keeps working.
const TokenKey = "token"

// EnsureToken returns the key to derive NATS passwords from and the Secret data that holds
// it. A key already in the Secret is kept (so restarts and other replicas agree and
// sidecars keep their passwords); otherwise a new random one (32 bytes, hex) is generated
// and changed is true, telling the caller to write data back. existing is not modified.
func EnsureToken(existing map[string][]byte) (token string, data map[string][]byte, changed bool) {
	if t := strings.TrimSpace(string(existing[TokenKey])); t != "" {
		return t, existing, false
	}
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+); it panics instead
	token = hex.EncodeToString(b[:])
	data = maps.Clone(existing)
	if data == nil {
		data = map[string][]byte{}
	}
	data[TokenKey] = []byte(token)
	return token, data, true
}
