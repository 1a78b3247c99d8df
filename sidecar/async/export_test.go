package async

import "github.com/nats-io/nats.go/jetstream"

// SetBeforeAck runs f between a dispatched copy's store and the original's ack.
func SetBeforeAck(c *Consumer, f func(jetstream.Msg)) { c.beforeAck = f }
