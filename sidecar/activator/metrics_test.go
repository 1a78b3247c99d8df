package activator

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestWritePrometheus(t *testing.T) {
	f := newFixture(t)
	other := FunctionRef{Namespace: "blog", Name: "render", Cluster: "function|blog/render", MaxPending: 1}

	// shop/img: two requests held 3 s, then released.
	r1 := f.hold(context.Background(), ref())
	r2 := f.hold(context.Background(), ref())
	f.fc.Step(3 * time.Second)
	f.a.ClusterEndpointsChanged(img, 1)
	<-r1
	<-r2
	// blog/render: one held, one overflowed.
	f.hold(context.Background(), other)
	if _, _, err := f.a.Hold(context.Background(), other); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("second blog/render Hold = %v, want ErrQueueFull", err)
	}
	// A cluster with endpoints but never held writes nothing.
	f.a.ClusterEndpointsChanged("function|shop/quiet", 1)

	var b strings.Builder
	if err := f.a.WritePrometheus(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		`weft_activator_cold_start_seconds_bucket{function="shop/img",le="2.5"} 0`,
		`weft_activator_cold_start_seconds_bucket{function="shop/img",le="5"} 2`,
		`weft_activator_cold_start_seconds_bucket{function="shop/img",le="+Inf"} 2`,
		`weft_activator_cold_start_seconds_sum{function="shop/img"} 6`,
		`weft_activator_cold_start_seconds_count{function="blog/render"} 0`,
		`weft_activator_held_total{function="shop/img"} 2`,
		`weft_activator_released_total{function="shop/img"} 2`,
		`weft_activator_overflowed_total{function="blog/render"} 1`,
		`weft_activator_timed_out_total{function="shop/img"} 0`,
		`weft_activator_pending{function="blog/render"} 1`,
		"# TYPE weft_activator_cold_start_seconds histogram",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "shop/quiet") {
		t.Errorf("a never-held cluster appears in the output")
	}
	// Sorted by function: blog/render before shop/img in every family.
	if i, j := strings.Index(out, `held_total{function="blog/render"}`), strings.Index(out, `held_total{function="shop/img"}`); i < 0 || j < i {
		t.Errorf("series not sorted by function")
	}
}
