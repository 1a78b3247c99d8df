package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/weftmesh/weft/sidecar/telemetry"
)

func TestBuildTelemetry(t *testing.T) {
	f := flags{pod: "reviews-v1-7c9d6f8b5-x2x9q", namespace: "bookinfo", labels: "app=reviews,version=v1,pod-template-hash=7c9d6f8b5"}
	tel, closeTel, err := buildTelemetry(f, telemetryFlags{istioMetrics: true, accessLogSample: 1})
	if err != nil || tel == nil {
		t.Fatalf("metrics on: %v, %v", tel, err)
	}
	defer closeTel()
	tel.Record(&telemetry.HTTPRecord{Cluster: "outbound|9080||ratings.bookinfo.svc.cluster.local|bookinfo/ratings", Status: 200, GRPCStatus: -1})
	var b bytes.Buffer
	tel.WritePrometheus(&b)
	if !strings.Contains(b.String(), `source_workload="reviews-v1",source_canonical_service="reviews",source_canonical_revision="v1",source_workload_namespace="bookinfo"`) {
		t.Errorf("the pod's identity is not in the labels:\n%s", b.String())
	}
	if tel, _, err := buildTelemetry(f, telemetryFlags{accessLogSample: 1}); tel != nil || err != nil {
		t.Errorf("everything off: %v, %v; want no telemetry", tel, err)
	}
	for _, bad := range []telemetryFlags{{istioMetrics: true, traceSample: 1.5, accessLogSample: 1}, {accessLog: true, accessLogSample: 0},
		{accessLog: true, accessLogSample: -0.1}, {accessLog: true, accessLogSample: 1, accessLogListener: "sideways"}} {
		if _, _, err := buildTelemetry(f, bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
