package redisproxy

import (
	"bytes"
	"testing"

	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
)

// fakeStore executes the split commands the way one redis-server would.
type fakeStore map[string]string

func (s fakeStore) exec(args [][]byte) []byte {
	switch string(bytes.ToLower(args[0])) {
	case "mset":
		for i := 1; i+1 < len(args); i += 2 {
			s[string(args[i])] = string(args[i+1])
		}
		return []byte("+OK\r\n")
	case "mget":
		out := resp.AppendArrayHeader(nil, len(args)-1)
		for _, k := range args[1:] {
			if v, ok := s[string(k)]; ok {
				out = resp.AppendBulk(out, []byte(v))
			} else {
				out = append(out, "$-1\r\n"...)
			}
		}
		return out
	case "exists":
		n := 0
		for _, k := range args[1:] {
			if _, ok := s[string(k)]; ok {
				n++
			}
		}
		return resp.AppendInt(nil, int64(n))
	case "del":
		n := 0
		for _, k := range args[1:] {
			if _, ok := s[string(k)]; ok {
				delete(s, string(k))
				n++
			}
		}
		return resp.AppendInt(nil, int64(n))
	}
	return []byte("-ERR fake store does not know this command\r\n")
}

// splitExec runs args split over shards and merged, as the proxy does.
func splitExec(t *testing.T, r *ring.Ring, shards []fakeStore, args [][]byte, step int, k kind) []byte {
	var targets []int
	for i := 1; i < len(args); i += step {
		targets = append(targets, r.Pick(args[i]))
	}
	p := &pending{merge: k}
	// the client owed the replies, with room for every fragment in flight
	cl := &client{slots: make(chan struct{}, len(args)), limit: DefaultClientOutputLimit}
	var ids []int
	p.pos, ids = planFragments(nil, targets)
	for f, id := range ids {
		cmd := appendFragment(nil, args, step, p.pos, f)
		parsed, _, err := resp.NewReader(bytes.NewReader(cmd)).ReadCommand()
		if err != nil {
			t.Fatalf("fragment %q does not parse: %v", cmd, err)
		}
		rq := &request{cl: cl}
		cl.takeSlot()
		rq.complete(shards[id].exec(parsed))
		p.frags = append(p.frags, rq)
	}
	return mergeReplies(nil, p)
}

// FuzzSplitMerge checks that splitting MSET/MGET/EXISTS/DEL over three shards
// and merging the replies gives exactly what one server would answer.
func FuzzSplitMerge(f *testing.F) {
	f.Add([]byte("a\x00b\x00c\x00{t}1\x00{t}2\x00a"))
	f.Add([]byte("\xff\x80\x00\x00k\r\n\x00" + "x"))
	f.Add([]byte("user:1\x00user:2\x00user:3\x00user:4\x00user:5\x00user:6"))
	r, err := ring.New(ring.Options{Distribution: ring.Ketama, Hash: "murmur", HashTag: "{}"},
		[]ring.Server{{Name: "a", Weight: 1}, {Name: "b", Weight: 2}, {Name: "c", Weight: 1}}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		keys := bytes.Split(in, []byte{0})
		if len(keys) > 64 {
			keys = keys[:64]
		}
		shards := []fakeStore{{}, {}, {}}
		single := fakeStore{}
		mset := [][]byte{[]byte("MSET")}
		for i, k := range keys {
			if i%3 == 2 {
				continue // leave some keys unset
			}
			mset = append(mset, k, append([]byte("v:"), k...))
		}
		if len(mset) > 1 {
			if got := splitExec(t, r, shards, mset, 2, kindSplitMSet); string(got) != "+OK\r\n" {
				t.Fatalf("MSET merged to %q", got)
			}
			single.exec(mset)
		}
		for _, c := range []struct {
			name string
			k    kind
		}{{"MGET", kindSplitMGet}, {"EXISTS", kindSplitSum}, {"DEL", kindSplitSum}, {"EXISTS", kindSplitSum}} {
			args := append([][]byte{[]byte(c.name)}, keys...)
			got := splitExec(t, r, shards, args, 1, c.k)
			want := single.exec(args)
			if !bytes.Equal(got, want) {
				t.Fatalf("%s %q: split+merge %q, one server %q", c.name, keys, got, want)
			}
		}
	})
}
