package async

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// Config is one function's asynchronous-call policy, the MeshFunction's spec.async and
// spec.timeout as carried in its cluster metadata.
type Config struct {
	// Enabled makes every call to the function asynchronous; without it callers opt in per
	// request with "Prefer: respond-async".
	Enabled bool
	// MaxAttempts is how many times a call runs before it is dead-lettered.
	MaxAttempts int
	// Backoff before the first retry, doubling per attempt up to MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// RetryOn are the app's status codes that are retried. Connection failures and timeouts
	// are always retried; every other status is final.
	RetryOn []int
	// MaxAge of a call since it was accepted; older calls are dead-lettered unrun.
	MaxAge time.Duration
	// DeadLetter keeps failed calls in WEFT_DEAD; without it they are dropped.
	DeadLetter bool
	// MaxInflight calls one sidecar runs at once.
	MaxInflight int
	// MaxBodyBytes of a call's request body; bigger bodies get 413.
	MaxBodyBytes int64
	// Timeout of one attempt against the app.
	Timeout time.Duration
}

// DefaultConfig matches the MeshFunction CRD defaults.
func DefaultConfig() Config {
	return Config{
		MaxAttempts:  3,
		Backoff:      time.Second,
		MaxBackoff:   60 * time.Second,
		RetryOn:      []int{429, 500, 502, 503, 504},
		MaxAge:       24 * time.Hour,
		DeadLetter:   true,
		MaxInflight:  10,
		MaxBodyBytes: 1 << 20,
		Timeout:      300 * time.Second,
	}
}

// Retryable reports whether the app's status is in RetryOn.
func (c Config) Retryable(status int) bool { return slices.Contains(c.RetryOn, status) }

// DecodeConfig reads the async policy from a function cluster's weft.dev/function metadata
// (pure). It takes the top-level "timeout" and the "async" key in either form:
//
//	"async": true                       — enabled, every other field defaulted
//	"async": {"enabled": true, "maxAttempts": 3, "backoff": "1s", "maxBackoff": "60s",
//	          "retryOn": [429,500,502,503,504], "maxAge": "24h", "deadLetter": true,
//	          "maxInflight": 10, "maxBodyBytes": 1048576}
//
// Missing keys take DefaultConfig's values, so an older control plane that sends only the
// bool still works.
func DecodeConfig(meta *structpb.Struct) (Config, error) {
	c := DefaultConfig()
	f := meta.GetFields()
	if err := durField(f, "timeout", &c.Timeout); err != nil {
		return c, err
	}
	av, ok := f["async"]
	if !ok {
		return c, nil
	}
	switch k := av.GetKind().(type) {
	case *structpb.Value_BoolValue:
		c.Enabled = k.BoolValue
		return c, nil
	case *structpb.Value_NullValue:
		return c, nil
	case *structpb.Value_StructValue:
		a := k.StructValue.GetFields()
		if v, ok := a["enabled"]; ok {
			if _, isBool := v.GetKind().(*structpb.Value_BoolValue); !isBool {
				return c, fmt.Errorf("async.enabled must be a boolean")
			}
			c.Enabled = v.GetBoolValue()
		}
		if v, ok := a["deadLetter"]; ok {
			if _, isBool := v.GetKind().(*structpb.Value_BoolValue); !isBool {
				return c, fmt.Errorf("async.deadLetter must be a boolean")
			}
			c.DeadLetter = v.GetBoolValue()
		}
		for _, d := range []struct {
			key string
			dst *time.Duration
		}{{"backoff", &c.Backoff}, {"maxBackoff", &c.MaxBackoff}, {"maxAge", &c.MaxAge}} {
			if err := durField(a, d.key, d.dst); err != nil {
				return c, fmt.Errorf("async.%w", err)
			}
		}
		var n int64
		for _, i := range []struct {
			key      string
			min, max int64
			set      func(int64)
		}{
			{"maxAttempts", 1, 100, func(v int64) { c.MaxAttempts = int(v) }},
			{"maxInflight", 1, 1000, func(v int64) { c.MaxInflight = int(v) }},
			{"maxBodyBytes", 1, 8 << 20, func(v int64) { c.MaxBodyBytes = v }},
		} {
			ok, err := intField(a, i.key, i.min, i.max, &n)
			if err != nil {
				return c, fmt.Errorf("async.%w", err)
			}
			if ok {
				i.set(n)
			}
		}
		if v, ok := a["retryOn"]; ok {
			list := v.GetListValue()
			if list == nil {
				return c, fmt.Errorf("async.retryOn must be a list of status codes")
			}
			c.RetryOn = nil
			for _, e := range list.GetValues() {
				code := e.GetNumberValue()
				if code != float64(int(code)) || code < 100 || code > 599 {
					return c, fmt.Errorf("async.retryOn: %v is not an HTTP status code", e.AsInterface())
				}
				c.RetryOn = append(c.RetryOn, int(code))
			}
		}
		if c.MaxBackoff < c.Backoff {
			c.MaxBackoff = c.Backoff
		}
		return c, nil
	default:
		return c, fmt.Errorf("async must be a boolean or an object, got %v", av.AsInterface())
	}
}

func durField(f map[string]*structpb.Value, key string, dst *time.Duration) error {
	v, ok := f[key]
	if !ok {
		return nil
	}
	s, isStr := v.GetKind().(*structpb.Value_StringValue)
	if !isStr {
		return fmt.Errorf("%s must be a duration string like \"30s\", got %v", key, v.AsInterface())
	}
	d, err := time.ParseDuration(s.StringValue)
	if err != nil || d <= 0 {
		return fmt.Errorf("%s %q must be a positive duration like \"30s\"", key, s.StringValue)
	}
	*dst = d
	return nil
}

func intField(f map[string]*structpb.Value, key string, lo, hi int64, dst *int64) (bool, error) {
	v, ok := f[key]
	if !ok {
		return false, nil
	}
	n, isNum := v.GetKind().(*structpb.Value_NumberValue)
	if !isNum || n.NumberValue != float64(int64(n.NumberValue)) || int64(n.NumberValue) < lo || int64(n.NumberValue) > hi {
		return false, fmt.Errorf("%s must be a whole number from %d to %d, got %v", key, lo, hi, v.AsInterface())
	}
	*dst = int64(n.NumberValue)
	return true, nil
}
