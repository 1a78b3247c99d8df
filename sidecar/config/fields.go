package config

import (
	"fmt"
	"sort"
	"time"

	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
)

// onlyFields returns an error naming the first populated field of m that is not in allowed.
// This is how the sidecar refuses configuration it would otherwise silently ignore: every
// message it decodes lists the fields it implements, and anything else set is a NACK.
func onlyFields(m proto.Message, where string, allowed ...string) error {
	if m == nil {
		return nil
	}
	var bad []string
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		name := string(fd.Name())
		for _, a := range allowed {
			if a == name {
				return true
			}
		}
		bad = append(bad, name)
		return true
	})
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("%s: field %s (%s) is not supported by the weft sidecar; remove it or use a supported field",
		where, bad[0], m.ProtoReflect().Descriptor().FullName())
}

func dur(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

// perMillion normalises a FractionalPercent; a nil percentage means 100 %, as in Envoy's
// fault filter and mirror policy defaults.
func perMillion(p *typev3.FractionalPercent) uint32 {
	if p == nil {
		return 1_000_000
	}
	n := uint64(p.GetNumerator())
	switch p.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		n *= 10_000
	case typev3.FractionalPercent_TEN_THOUSAND:
		n *= 100
	}
	if n > 1_000_000 {
		n = 1_000_000
	}
	return uint32(n)
}
