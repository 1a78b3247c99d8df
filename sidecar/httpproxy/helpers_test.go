package httpproxy_test

import "google.golang.org/protobuf/types/known/wrapperspb"

func wrapBool(b bool) *wrapperspb.BoolValue { return wrapperspb.Bool(b) }
