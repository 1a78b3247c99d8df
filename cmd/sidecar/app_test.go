package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// appAccepting dials the app's port: refused before it listens, fine after.
func TestAppAccepting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	check := appAccepting(port)
	if err := check(); err != nil {
		t.Fatalf("app listening: %v", err)
	}
	ln.Close()
	if err := check(); err == nil || !strings.Contains(err.Error(), strconv.Itoa(port)) {
		t.Fatalf("app gone: err = %v, want one naming port %d", err, port)
	}
}
