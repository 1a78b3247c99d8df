package httpproxy

import (
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// How a stream on the frame relay (frames.go) ends: answers the relay makes itself (the
// policy's error replies and local replies, gRPC calls answered as gRPC, Trailers-Only),
// resets either way, and what an ended stream gives back.

// policyReply answers with the policy's error reply.
func (s *fstream) policyReply(st step) {
	s.ex.rec.Flags = responseFlag(st.err)
	w := &frameReply{h: http.Header{}}
	markOverloaded(w, st.err)
	s.answer(w, st.status, st.msg, true)
}

// refuse refuses s unprocessed (fconn.refuseStream) after it was admitted. Like a
// request the relay leaves to net/http (framedown.go), it is not counted as an exchange.
func (s *fstream) refuse() {
	s.f.refuseStream(s.id)
	s.ex.retry.release()
	s.ex.c.Done()
	s.ex.done(s.f.l)
	s.release()
}

// localReply answers here with extra headers; see answer.
func (s *fstream) localReply(status int, msg string, extra http.Header, counted bool) {
	w := &frameReply{h: http.Header{}}
	for k, v := range extra {
		w.h[k] = v
	}
	s.answer(w, status, msg, counted)
}

// answer answers here: a gRPC call as gRPC (Trailers-Only), anything else with a
// plain-text body. counted: the exchange was admitted by its cluster, whose stats count
// it as it ends.
func (s *fstream) answer(w *frameReply, status int, msg string, counted bool) {
	if s.grpc {
		grpcReply(w, status, msg)
	} else {
		localReply(w, status, msg)
	}
	s.ex.status = w.status
	s.ex.rec.RespBytes = int64(len(w.body))
	fs := append(make([]hpack.HeaderField, 0, len(w.h)+1), hpack.HeaderField{Name: ":status", Value: strconv.Itoa(w.status)})
	fs = appendFields(fs, w.h)
	s.f.out.headers(s.id, fs, len(w.body) == 0)
	if len(w.body) > 0 {
		s.f.out.data(s.id, w.body, true) // a few hundred bytes: within any window a caller opens
	}
	if s.grpc {
		s.grpcStatus(w.h.Get("Grpc-Status"))
	}
	if !counted {
		s.finishUnadmitted()
		return
	}
	s.finish()
}

// fieldValue is the first value of the named field.
func fieldValue(fs []hpack.HeaderField, name string) string {
	for _, f := range fs {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// frameReply is the http.ResponseWriter a local answer is written to.
type frameReply struct {
	h      http.Header
	status int
	body   []byte
}

func (w *frameReply) Header() http.Header { return w.h }
func (w *frameReply) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *frameReply) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, p...)
	return len(p), nil
}

// callerReset ends the stream because the caller reset it (or its connection ended):
// the request is cancelled upstream, as the event loop does when a caller hangs up.
func (s *fstream) callerReset(byCaller bool) {
	if s.done {
		return
	}
	if byCaller {
		s.f.l.callerResets.Add(1)
		s.ex.rec.Flags = "DC"
	}
	if s.ex.host != nil {
		s.ex.c.Report(s.ex.host, s.ex.retry.onAbandon())
		s.ex.host = nil
	}
	s.detach(http2.ErrCodeCancel, true)
	s.finish()
}

// reset resets the caller's stream and ends the exchange.
func (s *fstream) reset(code http2.ErrCode, why string) {
	if s.done {
		return
	}
	_ = why // the code is all HTTP/2 can say
	_ = s.f.out.fr.WriteRSTStream(s.id, code)
	s.f.out.dirty = true
	if s.ex.host != nil {
		s.ex.c.Report(s.ex.host, s.ex.retry.onAbandon())
		s.ex.host = nil
	}
	s.detach(http2.ErrCodeCancel, true)
	if s.ex.status == 0 && s.gotHead {
		s.ex.status = http.StatusBadGateway
	}
	s.finish()
}

// finish ends an admitted exchange: stats, slots, window, and the stream.
func (s *fstream) finish() {
	if s.done {
		return
	}
	s.ex.end(s.f.l, time.Since(s.ex.start))
	s.release()
}

// finishUnadmitted ends an exchange answered before the cluster admitted it.
func (s *fstream) finishUnadmitted() {
	if s.done {
		return
	}
	s.f.l.recordLoop(&s.ex, time.Since(s.ex.start))
	s.ex.done(s.f.l)
	s.release()
}

func (s *fstream) release() {
	s.done = true
	f := s.f
	s.due = time.Time{}
	if s.u != nil {
		s.detach(http2.ErrCodeCancel, true)
	}
	if s.keep {
		f.kept -= int64(len(s.body))
	}
	// Window for what the caller sent and the relay will never forward.
	f.giveBack(nil, int64(len(s.body)-s.acked))
	s.body = nil
	s.ex.r, s.ex.route, s.ex.wc = nil, nil, nil
	f.streamEnded(s)
	if len(f.free) < cap(f.free) {
		f.free = append(f.free, s)
	}
}

// newStream takes a stream from the connection's free list (a few, kept with their
// buffers) or makes one.
func (f *fconn) newStream() *fstream {
	if f.free == nil {
		f.free = make([]*fstream, 0, 16)
	}
	if n := len(f.free); n > 0 {
		s := f.free[n-1]
		f.free = f.free[:n-1]
		*s = fstream{f: f, fields: s.fields[:0], pend: s.pend[:0]}
		return s
	}
	return &fstream{f: f}
}
