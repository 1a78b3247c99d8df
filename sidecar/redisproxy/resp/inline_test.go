package resp

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/iotest"
)

func splitStrings(line string) ([]string, error) {
	dst, spans, err := SplitInline(nil, nil, []byte(line))
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, sp := range spans {
		out = append(out, string(dst[sp[0]:sp[1]]))
	}
	return out, nil
}

// inlineCases are sdssplitargs behaviours, most of them taken from Redis's
// own tests (tests/unit/protocol.tcl "Unbalanced number of quotes", the
// sdssplitargs cases redis-cli's tests rely on) and checked against
// redis-server 7.0 by TestInlineSplitMatchesRedis.
var inlineCases = []struct {
	line string
	want []string // nil: unbalanced quotes
}{
	{`SET "foo bar" v1`, []string{"SET", "foo bar", "v1"}},
	{`set """test-key""" test-value`, nil},
	{`GET "x`, nil},
	{`GET 'x`, nil},
	{`GET "a"b`, nil},
	{`GET 'a'b`, nil},
	{`ECHO "\x41\x4g\n"`, []string{"ECHO", "Ax4g\n"}},
	{`ECHO "\x41\x4"`, []string{"ECHO", "Ax4"}},
	{`ECHO "\xff\x00\XAB"`, []string{"ECHO", "\xff\x00XAB"}},
	{`ECHO a"b c"`, []string{"ECHO", "ab c"}},
	{`ECHO a'b c'd`, nil},
	{`ECHO "a\qb" "\"" "\\"`, []string{"ECHO", "aqb", `"`, `\`}},
	{`ECHO "\n\r\t\b\a"`, []string{"ECHO", "\n\r\t\b\a"}},
	{`ECHO 'a\nb' 'it\'s' 'a\b'`, []string{"ECHO", `a\nb`, "it's", `a\b`}},
	{`ECHO '\\'`, nil},
	{`ECHO "" ''`, []string{"ECHO", "", ""}},
	{"ECHO  a\vb", []string{"ECHO", "a\vb"}},
	{"\v\fECHO\ta \r", []string{"ECHO", "a"}},
	{"ECHO \"a\"\vb", []string{"ECHO", "a", "b"}},
	{`ECHO "a\`, nil},
	{`ECHO "a\"`, nil},
	{"", []string{}},
	{"   ", []string{}},
}

func TestSplitInline(t *testing.T) {
	for _, c := range inlineCases {
		got, err := splitStrings(c.line)
		if c.want == nil {
			if !errors.Is(err, ErrUnbalancedQuotes) {
				t.Errorf("%q: got %q, %v; want unbalanced quotes", c.line, got, err)
			}
			continue
		}
		if err != nil || fmt.Sprintf("%q", got) != fmt.Sprintf("%q", c.want) {
			t.Errorf("%q: got %q, %v; want %q", c.line, got, err, c.want)
		}
	}
	if _, err := splitStrings("GET \"a\x00b\""); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("a NUL byte must be refused, got %v", err)
	}
}

// TestReadInline: the Reader splits inline lines with SplitInline, never
// hands out the raw line, and refuses a line over MaxInline.
func TestReadInline(t *testing.T) {
	r := NewReader(strings.NewReader("SET \"foo bar\" 'v 1'\r\nGET \"x\r\n"))
	args, raw, err := r.ReadCommand()
	if err != nil || raw != nil || len(args) != 3 || string(args[1]) != "foo bar" || string(args[2]) != "v 1" {
		t.Fatalf("got %q raw %q, %v", args, raw, err)
	}
	if _, _, err := r.ReadCommand(); err == nil || err.Error() != "Protocol error: unbalanced quotes in request" {
		t.Fatalf("unbalanced quotes: %v", err)
	}
	for _, in := range []string{"ECHO " + strings.Repeat("a", MaxInline) + "\r\n", strings.Repeat("a", MaxInline+1)} {
		_, _, err := NewReader(strings.NewReader(in)).ReadCommand()
		if err == nil || err.Error() != "Protocol error: too big inline request" {
			t.Fatalf("%d-byte line: %v", len(in), err)
		}
	}
	// Just under the limit is a command.
	in := "ECHO " + strings.Repeat("a", MaxInline-7) + "\r\n"
	if args, _, err := NewReader(strings.NewReader(in)).ReadCommand(); err != nil || len(args[1]) != MaxInline-7 {
		t.Fatalf("line of %d bytes: %v", len(in), err)
	}
}

// quoteInline is redis-cli's sdscatrepr: the quoted form whose
// sdssplitargs parse is the original bytes.
func quoteInline(dst []byte, a []byte) []byte {
	dst = append(dst, '"')
	for _, c := range a {
		switch c {
		case '\\', '"':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, `\n`...)
		case '\r':
			dst = append(dst, `\r`...)
		case '\t':
			dst = append(dst, `\t`...)
		case '\a':
			dst = append(dst, `\a`...)
		case '\b':
			dst = append(dst, `\b`...)
		default:
			if c < 0x20 || c >= 0x7f {
				dst = fmt.Appendf(dst, `\x%02x`, c)
			} else {
				dst = append(dst, c)
			}
		}
	}
	return append(dst, '"')
}

// FuzzSplitInline checks SplitInline against two references: sdscatrepr's
// quoting (redis-cli's output, which Redis parses back to the same bytes)
// and an independent reading of the grammar (splitting agrees with the
// quoted round trip of its own result). Seeds are the Redis cases above.
func FuzzSplitInline(f *testing.F) {
	for _, c := range inlineCases {
		f.Add([]byte(c.line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		dst, spans, err := SplitInline(nil, nil, line)
		if err != nil {
			// An error is only ever quotes or NUL: an unquoted line of
			// non-quote bytes always splits.
			if !bytes.ContainsAny(line, "\"'\x00") {
				t.Fatalf("%q: %v without quotes", line, err)
			}
			return
		}
		// Without quotes, the split is a plain field split on the blanks.
		if !bytes.ContainsAny(line, "\"'") {
			fields := bytes.FieldsFunc(line, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
			// \v and \f only separate before an argument, not inside one;
			// compare only when neither occurs.
			if !bytes.ContainsAny(line, "\v\f") && len(fields) != len(spans) {
				t.Fatalf("%q: %d args, want %d", line, len(spans), len(fields))
			}
		}
		// Re-quote every argument and parse again: the same arguments.
		var q []byte
		for i, sp := range spans {
			if i > 0 {
				q = append(q, ' ')
			}
			q = quoteInline(q, dst[sp[0]:sp[1]])
		}
		dst2, spans2, err := SplitInline(nil, nil, q)
		if err != nil || len(spans2) != len(spans) {
			t.Fatalf("%q -> %q: %d args, %v", line, q, len(spans2), err)
		}
		for i := range spans {
			if !bytes.Equal(dst[spans[i][0]:spans[i][1]], dst2[spans2[i][0]:spans2[i][1]]) {
				t.Fatalf("%q -> %q: argument %d differs", line, q, i)
			}
		}
	})
}

// TestBulkHeaderDoesNotAllocateAhead: a header that claims a 512 MB bulk
// and sends little makes the Reader grow only with what arrives.
func TestBulkHeaderDoesNotAllocateAhead(t *testing.T) {
	in := "*2\r\n$3\r\nSET\r\n$536870912\r\n" + strings.Repeat("z", 100<<10)
	r := NewReader(iotest.OneByteReader(strings.NewReader(in)))
	if _, _, err := r.ReadCommand(); err == nil {
		t.Fatal("a truncated command parsed")
	}
	if n := r.BufferSize(); n > 4*len(in) {
		t.Fatalf("%d-byte buffer for %d bytes received", n, len(in))
	}
}
