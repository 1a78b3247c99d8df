package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestEchoReportsItselfAndTheRequest(t *testing.T) {
	srv := httptest.NewServer(handler("v2", "reviews-abc"))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/books/7?x=1", nil)
	req.Header.Set("X-Test", "yes")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got Reply
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Version != "v2" || got.Pod != "reviews-abc" || got.Method != "PUT" || got.Path != "/books/7" || got.Query != "x=1" ||
		len(got.Headers["X-Test"]) != 1 || got.Headers["X-Test"][0] != "yes" {
		t.Errorf("reply %+v does not echo the request", got)
	}
	if v := resp.Header.Get("X-Version"); v != "v2" {
		t.Errorf("X-Version %q, want v2 (the caller example counts versions by it)", v)
	}
}
