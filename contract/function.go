package contract

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// Bounds the sidecar accepts for an async policy; the MeshFunction CRD validates the same.
const (
	MaxAsyncAttempts = 100     // attempts of one call
	MaxAsyncInflight = 1000    // calls one sidecar runs at once
	MaxAsyncBodySize = 8 << 20 // bytes of one call's request body
)

// ErrAsyncPolicy marks a malformed "async" or "timeout" in weft.dev/function metadata. The
// rest of the metadata is still usable: a sidecar keeps the function and falls back to the
// default async policy.
var ErrAsyncPolicy = errors.New("async policy unreadable")

// FunctionMeta is the weft.dev/function cluster metadata of a MeshFunction's cluster.
type FunctionMeta struct {
	Namespace, Name string
	// HoldTimeout bounds how long a caller's sidecar holds a request while the function
	// has no endpoints.
	HoldTimeout time.Duration
	// MaxPending bounds the requests one caller's sidecar holds for the function.
	MaxPending int32
	// ContainerConcurrency limits concurrent requests per pod (0: unlimited).
	ContainerConcurrency int32
	// MinScale is the function's minimum replica count.
	MinScale int32
	// Timeout of one call (0: unset, the sidecar's default; left out of the wire form).
	Timeout time.Duration
	// Async is the function's async policy.
	Async AsyncPolicy
	// Revision, set on the cluster of one revision of a function with spec.traffic, names
	// that revision: callers' demand for this cluster is for the revision (the autoscaler
	// scales each revision on its own), while Name stays the function (async calls go to
	// the function's queue). Empty: the function's own cluster; left out of the wire form.
	Revision string
	// Traffic, on the function's own cluster of a function with revisions, is its split
	// (status.traffic, summed per revision, 0 % targets left out): the function's pods
	// dispatch queued calls by it. Empty: no revisions; left out of the wire form.
	Traffic []RevisionTraffic
}

// MaxTrafficTargets bounds FunctionMeta.Traffic (spec.traffic holds at most 16 targets).
const MaxTrafficTargets = 16

// RevisionTraffic is one revision's share of a function's calls.
type RevisionTraffic struct {
	Revision string
	Percent  int32
}

// AsyncPolicy is a function's asynchronous-call policy as it travels. Zero values (and nil
// DeadLetter and RetryOn) are unset: the sidecar fills the MeshFunction CRD's defaults.
type AsyncPolicy struct {
	Enabled      bool
	MaxAttempts  int32
	MaxInflight  int32
	MaxBodyBytes int64
	Backoff      time.Duration
	MaxBackoff   time.Duration
	MaxAge       time.Duration
	DeadLetter   *bool
	// RetryOn are HTTP status codes; nil: unset, empty: retry no status.
	RetryOn []int32
}

// Encode returns the metadata as a Struct, every top-level key written but an unset timeout.
func (m FunctionMeta) Encode() *structpb.Struct {
	f := map[string]*structpb.Value{
		"namespace":            structpb.NewStringValue(m.Namespace),
		"name":                 structpb.NewStringValue(m.Name),
		"holdTimeout":          structpb.NewStringValue(m.HoldTimeout.String()),
		"maxPending":           structpb.NewNumberValue(float64(m.MaxPending)),
		"containerConcurrency": structpb.NewNumberValue(float64(m.ContainerConcurrency)),
		"minScale":             structpb.NewNumberValue(float64(m.MinScale)),
		"async":                structpb.NewStructValue(m.Async.Encode()),
	}
	if m.Timeout > 0 {
		f["timeout"] = structpb.NewStringValue(m.Timeout.String())
	}
	if m.Revision != "" {
		f["revision"] = structpb.NewStringValue(m.Revision)
	}
	if len(m.Traffic) > 0 {
		list := make([]*structpb.Value, len(m.Traffic))
		for i, t := range m.Traffic {
			list[i] = structpb.NewStructValue(fields(map[string]*structpb.Value{
				"revision": structpb.NewStringValue(t.Revision), "percent": structpb.NewNumberValue(float64(t.Percent))}))
		}
		f["traffic"] = structpb.NewListValue(&structpb.ListValue{Values: list})
	}
	return fields(f)
}

// Encode returns the policy as a Struct; unset fields are left out.
func (a AsyncPolicy) Encode() *structpb.Struct {
	f := map[string]*structpb.Value{"enabled": structpb.NewBoolValue(a.Enabled)}
	for key, n := range map[string]int64{"maxAttempts": int64(a.MaxAttempts), "maxInflight": int64(a.MaxInflight), "maxBodyBytes": a.MaxBodyBytes} {
		if n > 0 {
			f[key] = structpb.NewNumberValue(float64(n))
		}
	}
	for key, d := range map[string]time.Duration{"backoff": a.Backoff, "maxBackoff": a.MaxBackoff, "maxAge": a.MaxAge} {
		if d > 0 {
			f[key] = structpb.NewStringValue(d.String())
		}
	}
	if a.DeadLetter != nil {
		f["deadLetter"] = structpb.NewBoolValue(*a.DeadLetter)
	}
	if a.RetryOn != nil {
		codes := make([]*structpb.Value, len(a.RetryOn))
		for i, c := range a.RetryOn {
			codes[i] = structpb.NewNumberValue(float64(c))
		}
		f["retryOn"] = structpb.NewListValue(&structpb.ListValue{Values: codes})
	}
	return fields(f)
}

// DecodeFunctionMeta reads weft.dev/function. Unknown keys are ignored (a newer control
// plane may add some). "async" is taken in either form, the policy object or the older bare
// bool; "async": null is unset. An error in "async" or "timeout" wraps ErrAsyncPolicy and
// comes with every other field filled (and Async.Enabled, when readable).
func DecodeFunctionMeta(s *structpb.Struct) (FunctionMeta, error) {
	var m FunctionMeta
	f := s.GetFields()
	var maxPending, cc, minScale int64
	_, errPending := whole(f, "maxPending", 0, math.MaxInt32, &maxPending)
	_, errCC := whole(f, "containerConcurrency", 0, math.MaxInt32, &cc)
	_, errMin := whole(f, "minScale", 0, math.MaxInt32, &minScale)
	if err := errors.Join(str(f, "namespace", &m.Namespace), str(f, "name", &m.Name), str(f, "revision", &m.Revision),
		durationFrom(f, "holdTimeout", 0, &m.HoldTimeout), errPending, errCC, errMin); err != nil {
		return m, err
	}
	m.MaxPending, m.ContainerConcurrency, m.MinScale = int32(maxPending), int32(cc), int32(minScale)
	if m.Name == "" {
		return m, errors.New("name is empty: the control plane must name the function")
	}
	if err := duration(f, "timeout", &m.Timeout); err != nil {
		return m, fmt.Errorf("%w: %w", ErrAsyncPolicy, err)
	}
	a, err := decodeAsync(f["async"])
	m.Async = a
	if err != nil {
		return m, fmt.Errorf("%w: %w", ErrAsyncPolicy, err)
	}
	// The split only steers queued calls: unreadable, it is an async policy error, and the
	// function's pods run queued calls where they are.
	if m.Traffic, err = decodeTraffic(f["traffic"]); err != nil {
		return m, fmt.Errorf("%w: %w", ErrAsyncPolicy, err)
	}
	return m, nil
}

// decodeTraffic reads "traffic": at most MaxTrafficTargets {revision, percent 0..100}.
func decodeTraffic(v *structpb.Value) ([]RevisionTraffic, error) {
	if v == nil {
		return nil, nil
	}
	list := v.GetListValue()
	if list == nil {
		return nil, errors.New("traffic must be a list")
	}
	if len(list.GetValues()) > MaxTrafficTargets {
		return nil, fmt.Errorf("traffic has %d targets, more than %d", len(list.GetValues()), MaxTrafficTargets)
	}
	var out []RevisionTraffic
	for i, e := range list.GetValues() {
		f := e.GetStructValue().GetFields()
		var t RevisionTraffic
		var pct int64
		if err := str(f, "revision", &t.Revision); err != nil || t.Revision == "" || strings.ContainsAny(t.Revision, ".*> \t\r\n") {
			return nil, fmt.Errorf("traffic[%d].revision %v is not a revision name", i, f["revision"].AsInterface())
		}
		if ok, err := whole(f, "percent", 0, 100, &pct); err != nil || !ok {
			return nil, fmt.Errorf("traffic[%d].percent must be a whole number 0..100", i)
		}
		t.Percent = int32(pct)
		out = append(out, t)
	}
	return out, nil
}

// decodeAsync reads "async"; its errors name the key as async.<field>.
func decodeAsync(v *structpb.Value) (AsyncPolicy, error) {
	a, err := decodeAsyncFields(v)
	if err != nil && !strings.HasPrefix(err.Error(), "async ") {
		err = fmt.Errorf("async.%w", err)
	}
	return a, err
}

func decodeAsyncFields(v *structpb.Value) (AsyncPolicy, error) {
	var a AsyncPolicy
	switch k := v.GetKind().(type) {
	case nil, *structpb.Value_NullValue:
		return a, nil
	case *structpb.Value_BoolValue:
		a.Enabled = k.BoolValue
		return a, nil
	case *structpb.Value_StructValue:
	default:
		return a, fmt.Errorf("async must be a boolean or an object, got %v", v.AsInterface())
	}
	f := v.GetStructValue().GetFields()
	if _, err := boolean(f, "enabled", &a.Enabled); err != nil {
		return a, err
	}
	var dead bool
	if set, err := boolean(f, "deadLetter", &dead); err != nil {
		return a, err
	} else if set {
		a.DeadLetter = &dead
	}
	for _, d := range []struct {
		key string
		dst *time.Duration
	}{{"backoff", &a.Backoff}, {"maxBackoff", &a.MaxBackoff}, {"maxAge", &a.MaxAge}} {
		if err := duration(f, d.key, d.dst); err != nil {
			return a, err
		}
	}
	var n int64
	for _, i := range []struct {
		key string
		max int64
		set func(int64)
	}{
		{"maxAttempts", MaxAsyncAttempts, func(v int64) { a.MaxAttempts = int32(v) }},
		{"maxInflight", MaxAsyncInflight, func(v int64) { a.MaxInflight = int32(v) }},
		{"maxBodyBytes", MaxAsyncBodySize, func(v int64) { a.MaxBodyBytes = v }},
	} {
		ok, err := whole(f, i.key, 1, i.max, &n)
		if err != nil {
			return a, err
		}
		if ok {
			i.set(n)
		}
	}
	if v, ok := f["retryOn"]; ok {
		list := v.GetListValue()
		if list == nil {
			return a, fmt.Errorf("retryOn must be a list of status codes")
		}
		a.RetryOn = []int32{}
		for _, e := range list.GetValues() {
			code := e.GetNumberValue()
			if _, isNum := e.GetKind().(*structpb.Value_NumberValue); !isNum || code != float64(int(code)) || code < 100 || code > 599 {
				return a, fmt.Errorf("retryOn: %v is not an HTTP status code", e.AsInterface())
			}
			a.RetryOn = append(a.RetryOn, int32(code))
		}
	}
	return a, nil
}
