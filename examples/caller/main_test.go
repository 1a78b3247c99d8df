package main

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

func TestCallTalliesStatusesAndVersions(t *testing.T) {
	var n atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		i := n.Add(1)
		if i%4 == 0 {
			w.Header().Set("X-Version", "v2")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("X-Version", "v1")
	}))
	defer upstream.Close()
	got := call(upstream.Client(), upstream.URL, 100, 7, nil)
	if got.Total != 100 || got.ByStatus["200"] != 75 || got.ByStatus["503"] != 25 || got.ByVersion["v1"] != 75 || got.ByVersion["v2"] != 25 || got.Errors != 0 {
		t.Errorf("tally %+v, want 75 v1/200 and 25 v2/503", got)
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	if got := call(closed.Client(), closed.URL, 5, 2, nil); got.Errors != 5 || got.LastError == "" {
		t.Errorf("calls to a closed server: %+v, want 5 errors with a message", got)
	}
}
