package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSlowSleepsAsAsked(t *testing.T) {
	srv := httptest.NewServer(handler(0, "slow-1"))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/?ms=20")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"sleptMs":20`) {
		t.Errorf("?ms=20: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Get(srv.URL + "/?ms=soon")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("?ms=soon: %d, want 400", resp.StatusCode)
	}
}
