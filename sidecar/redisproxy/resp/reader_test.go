package resp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func readAll(t testing.TB, in []byte, oneByte bool) ([][]string, error) {
	var rd io.Reader = bytes.NewReader(in)
	if oneByte {
		rd = iotest.OneByteReader(rd)
	}
	r := NewReader(rd)
	var out [][]string
	for {
		args, raw, err := r.ReadCommand()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
		if raw != nil && len(raw) == 0 { // nil: an inline command, which has no raw form
			t.Fatal("empty raw for a command")
		}
		var cmd []string
		for _, a := range args {
			cmd = append(cmd, string(a))
		}
		out = append(out, cmd)
	}
}

func TestReadCommand(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want [][]string
		err  string
	}{
		{"multibulk", "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", [][]string{{"GET", "k"}}, ""},
		{"binary", "*2\r\n$3\r\nSET\r\n$4\r\n\x00\r\n\xff\r\n", [][]string{{"SET", "\x00\r\n\xff"}}, ""},
		{"pipelined", "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", [][]string{{"PING"}, {"PING"}}, ""},
		{"inline", "SET  a\tb\r\n\r\nGET a\n", [][]string{{"SET", "a", "b"}, {"GET", "a"}}, ""},
		{"empty array", "*0\r\n*1\r\n$4\r\nPING\r\n", [][]string{{"PING"}}, ""},
		{"empty bulk", "*2\r\n$3\r\nGET\r\n$0\r\n\r\n", [][]string{{"GET", ""}}, ""},
		{"bad type", "*1\r\n:4\r\n", nil, "expected '$'"},
		{"bad length", "*x\r\n", nil, "invalid length"},
		{"negative bulk", "*1\r\n$-1\r\n", nil, "invalid bulk length"},
		{"no crlf after bulk", "*1\r\n$1\r\nab\r\n", nil, "not terminated"},
		{"too many args", "*2000000\r\n", nil, "invalid multibulk length"},
		{"truncated", "*2\r\n$3\r\nGET\r\n", nil, "EOF"},
	}
	for _, c := range cases {
		for _, one := range []bool{false, true} {
			got, err := readAll(t, []byte(c.in), one)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Errorf("%s (oneByte=%v): err %v, want %q", c.name, one, err, c.err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
				continue
			}
			if len(got) != len(c.want) {
				t.Errorf("%s: got %q, want %q", c.name, got, c.want)
				continue
			}
			for i := range got {
				if strings.Join(got[i], "|") != strings.Join(c.want[i], "|") {
					t.Errorf("%s: got %q, want %q", c.name, got, c.want)
				}
			}
		}
	}
}

func TestReadReply(t *testing.T) {
	in := "+OK\r\n-ERR x\r\n:12\r\n$-1\r\n$4\r\na\r\nb\r\n*-1\r\n*2\r\n*1\r\n:1\r\n$0\r\n\r\n"
	want := []string{"+OK\r\n", "-ERR x\r\n", ":12\r\n", "$-1\r\n", "$4\r\na\r\nb\r\n", "*-1\r\n", "*2\r\n*1\r\n:1\r\n$0\r\n\r\n"}
	r := NewReader(iotest.OneByteReader(strings.NewReader(in)))
	for _, w := range want {
		got, err := r.ReadReply()
		if err != nil || string(got) != w {
			t.Fatalf("got %q %v, want %q", got, err, w)
		}
	}
	if _, err := NewReader(strings.NewReader("?\r\n")).ReadReply(); !IsProtocol(err) {
		t.Fatalf("want protocol error, got %v", err)
	}
	deep := strings.Repeat("*1\r\n", MaxDepth+1) + ":1\r\n"
	if _, err := NewReader(strings.NewReader(deep)).ReadReply(); !IsProtocol(err) {
		t.Fatalf("want protocol error for deep nesting, got %v", err)
	}
}

func TestWriters(t *testing.T) {
	got := string(AppendCommand(nil, []byte("SET"), []byte("k"), []byte("")))
	if got != "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n" {
		t.Fatalf("AppendCommand = %q", got)
	}
	if got := string(AppendError(nil, "ERR a\r\nb")); got != "-ERR a  b\r\n" {
		t.Fatalf("AppendError = %q", got)
	}
	if n, err := ReplyInt([]byte(":-42\r\n")); err != nil || n != -42 {
		t.Fatalf("ReplyInt = %d %v", n, err)
	}
	var elems []string
	if err := ArrayElements([]byte("*2\r\n$1\r\na\r\n:3\r\n"), func(e []byte) { elems = append(elems, string(e)) }); err != nil || len(elems) != 2 || elems[1] != ":3\r\n" {
		t.Fatalf("ArrayElements = %q %v", elems, err)
	}
}

func BenchmarkReadCommand(b *testing.B) {
	one := []byte("*3\r\n$3\r\nSET\r\n$16\r\nkey:000000012345\r\n$3\r\nxxx\r\n")
	buf := bytes.Repeat(one, 1000)
	b.SetBytes(int64(len(one)))
	b.ReportAllocs()
	rd := bytes.NewReader(buf)
	r := NewReader(rd)
	for b.Loop() {
		if _, _, err := r.ReadCommand(); err != nil {
			rd.Reset(buf)
		}
	}
}
