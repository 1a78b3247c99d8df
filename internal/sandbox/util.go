package sandbox

import (
	"crypto/tls"
	"os/exec"
)

func execOutput(path string, args ...string) (string, error) {
	out, err := exec.Command(path, args...).CombinedOutput()
	return string(out), err
}

// insecureTLS is for the readiness check of the manager's webhook port only: it asks
// "is something serving TLS here", the API server verifies the certificate for real.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} } //nolint:gosec
