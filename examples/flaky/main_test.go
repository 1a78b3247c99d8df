package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestFlakyFailsOnDemandAndByRate(t *testing.T) {
	next := 0.0
	s := &server{version: "v1", rand: func() float64 { return next }}
	srv := httptest.NewServer(s)
	defer srv.Close()
	status := func(method, path string) int {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("GET", "/"); got != 200 {
		t.Fatalf("healthy: %d, want 200", got)
	}
	status("POST", "/fail")
	if got := status("GET", "/"); got != 500 {
		t.Errorf("after POST /fail: %d, want 500", got)
	}
	status("POST", "/recover")
	if got := status("GET", "/"); got != 200 {
		t.Errorf("after POST /recover: %d, want 200", got)
	}
	s.rate = 0.3
	next = 0.29 // below the rate: fails
	if got := status("GET", "/"); got != 500 {
		t.Errorf("draw 0.29 at rate 0.3: %d, want 500", got)
	}
	next = 0.3
	if got := status("GET", "/"); got != 200 {
		t.Errorf("draw 0.3 at rate 0.3: %d, want 200", got)
	}
}
