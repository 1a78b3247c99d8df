package httpproxy

import (
	"net/url"
	"strings"
	"testing"
)

// parsePath must make of every HTTP/2 :path what url.ParseRequestURI makes: the relay routes
// on r.URL, and a path the two read differently would be routed (or policed) differently on
// the relay than on the goroutine path.
func TestParsePathAgreesWithParseRequestURI(t *testing.T) {
	for _, p := range []string{
		"/", "/a/b", "/a?b=c", "/a?", "/a??", "/a?b?c", "/helloworld.Greeter/SayHello",
		"/a%2Fb", "/a%zz", "/a b", "/a\x7f", "/a\x00", "/a?b c", "/a?\x01", "/a#f", "/a?b#f",
		"//double", "/:colon", "/a!b", "/a'b(c)*", "/ü", "/a?ü", "/a[b]", "/~user/$&+,;=@:",
		"/.." + strings.Repeat("/x", 50),
	} {
		checkParsePath(t, p)
	}
}

func FuzzParsePath(f *testing.F) {
	for _, p := range []string{"/", "/a?b", "/a%41", "/a?", "/a b", "//x"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if !strings.HasPrefix(p, "/") {
			return // the relay refuses a :path that does not start with "/" before parsing
		}
		checkParsePath(t, p)
	})
}

func checkParsePath(t *testing.T, p string) {
	t.Helper()
	got, ok := parsePath(p)
	want, err := url.ParseRequestURI(p)
	if ok != (err == nil) {
		t.Fatalf("%q: parsePath ok=%v, url.ParseRequestURI err=%v", p, ok, err)
	}
	if !ok {
		return
	}
	if *got != *want {
		t.Fatalf("%q: parsePath %#v, url.ParseRequestURI %#v", p, *got, *want)
	}
}
