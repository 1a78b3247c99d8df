package resp

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzReadCommand: any input either parses or fails cleanly; parsed commands
// re-encode to a request that parses to the same arguments; parsing whole and
// one byte at a time agree.
func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "PING\r\n", "SET a b\n\r\n", "*0\r\n", "*1\r\n$-1\r\n",
		"*3\r\n$3\r\nSET\r\n$4\r\n\x00\r\n\xff\r\n$0\r\n\r\n", "*1\r\n$4\r\nPI", "*99999999999999999999\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		whole, errWhole := collect(NewReader(bytes.NewReader(in)))
		bytewise, errByte := collect(NewReader(iotest.OneByteReader(bytes.NewReader(in))))
		if len(whole) != len(bytewise) || (errWhole == nil) != (errByte == nil) {
			t.Fatalf("whole %q (%v) vs bytewise %q (%v)", whole, errWhole, bytewise, errByte)
		}
		for i, args := range whole {
			if !bytes.Equal(bytes.Join(args, []byte{0}), bytes.Join(bytewise[i], []byte{0})) {
				t.Fatalf("command %d differs", i)
			}
			enc := AppendCommand(nil, args...)
			again, err := collect(NewReader(bytes.NewReader(enc)))
			if err != nil || len(again) != 1 || !bytes.Equal(bytes.Join(again[0], []byte{0}), bytes.Join(args, []byte{0})) {
				t.Fatalf("round trip of %q failed: %q %v", args, again, err)
			}
		}
	})
}

func collect(r *Reader) ([][][]byte, error) {
	var out [][][]byte
	for {
		args, _, err := r.ReadCommand()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		cp := make([][]byte, len(args))
		for i, a := range args {
			cp[i] = bytes.Clone(a)
		}
		out = append(out, cp)
	}
}

// FuzzReadReply: replies are consumed back to back and exactly cover the
// input they were read from.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"+OK\r\n", "*2\r\n$1\r\na\r\n:1\r\n", "$-1\r\n*-1\r\n", "-ERR x\r\n", "*1\r\n*1\r\n*1\r\n+x\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		var got []byte
		for {
			raw, err := r.ReadReply()
			if err != nil {
				break
			}
			got = append(got, raw...)
			if raw[0] == '*' {
				_ = ArrayElements(raw, func([]byte) {})
			}
		}
		if !bytes.HasPrefix(in, got) {
			t.Fatalf("replies %q are not a prefix of the input", got)
		}
	})
}
