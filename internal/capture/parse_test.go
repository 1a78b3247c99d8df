package capture

import (
	"strconv"
	"strings"
	"testing"
)

// TestAnnotationValidation: every bad value is refused with the annotation's name, the bad
// entry and what a good one looks like; good values (with Istio's lenient spacing) pass.
func TestAnnotationValidation(t *testing.T) {
	many := strings.Repeat("80,", MaxListEntries) + "80"
	manyCIDRs := strings.Repeat("10.0.0.0/8,", MaxListEntries) + "10.0.0.0/8"
	for _, tc := range []struct {
		name, value string
		want        string // substring of the error; "" means valid
	}{
		{AnnotationIncludeOutboundIPRanges, "*", ""},
		{AnnotationIncludeOutboundIPRanges, " * ", ""},
		{AnnotationIncludeOutboundIPRanges, "", ""},
		{AnnotationIncludeOutboundIPRanges, "10.96.0.0/12, fd00::/8", ""},
		{AnnotationIncludeOutboundIPRanges, "10.96.0.0/12,*", `"*" must be the whole value`},
		{AnnotationIncludeOutboundIPRanges, "10.96.0.10", `"10.96.0.10" is not a CIDR`},
		{AnnotationIncludeOutboundIPRanges, manyCIDRs, "at most 64"},
		{AnnotationExcludeOutboundIPRanges, "*", `"*" is not allowed here`},
		{AnnotationExcludeOutboundIPRanges, "10.0.0.0/33", `"10.0.0.0/33" is not a CIDR`},
		{AnnotationExcludeOutboundIPRanges, "300.1.1.1/32", "is not a CIDR"},
		{AnnotationExcludeOutboundIPRanges, "fe80::1%eth0/64", "is not a CIDR"},
		{AnnotationExcludeOutboundIPRanges, "::ffff:10.0.0.0/104", "IPv4-mapped"},
		{AnnotationExcludeOutboundIPRanges, "10.0.0.0/8,,169.254.169.254/32", ""},
		{AnnotationExcludeOutboundPorts, "5432,6379", ""},
		{AnnotationExcludeOutboundPorts, "0", `"0" is not a port number`},
		{AnnotationExcludeOutboundPorts, "65536", `"65536" is not a port number`},
		{AnnotationExcludeOutboundPorts, "-1", "is not a port number"},
		{AnnotationExcludeOutboundPorts, "80-90", `"80-90" is not a port number`},
		{AnnotationExcludeOutboundPorts, "*", `"*" is not allowed here`},
		{AnnotationExcludeOutboundPorts, many, "65 entries, at most 64"},
		{AnnotationIncludeInboundPorts, "*", ""},
		{AnnotationIncludeInboundPorts, "8080, 9090", ""},
		{AnnotationIncludeInboundPorts, "8080;9090", `"8080;9090" is not a port number`},
		{AnnotationExcludeInboundPorts, "http", `"http" is not a port number`},
		{AnnotationExcludeInboundPorts, "*", `"*" is not allowed here`},
		{AnnotationInterception, "iptables", ""},
		{AnnotationInterception, "proxy-env", ""},
		{AnnotationInterception, "tproxy", `"tproxy" is not an interception mode`},
		{AnnotationInterception, "", "is not an interception mode"},
	} {
		t.Run(tc.name+"="+strconv.Quote(tc.value[:min(len(tc.value), 40)]), func(t *testing.T) {
			ann := map[string]string{tc.name: tc.value}
			_, err := FromAnnotations(ann)
			if tc.name == AnnotationInterception {
				_, err = InterceptionOf(ann, InterceptionProxyEnv)
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused a valid value: %v", err)
			case tc.want == "":
			case err == nil:
				t.Fatalf("accepted; want an error containing %q", tc.want)
			case !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.name) || !strings.Contains(err.Error(), "fix or remove it"):
				t.Fatalf("error %q; want it to name %s and contain %q", err, tc.name, tc.want)
			}
		})
	}
}

func TestFromAnnotationsNormalizes(t *testing.T) {
	c, err := FromAnnotations(map[string]string{
		AnnotationExcludeOutboundIPRanges: "10.1.2.3/8, 10.0.0.0/8, fd00::1/8",
		AnnotationExcludeOutboundPorts:    "80,80, 443",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := (IPRanges{Prefixes: c.ExcludeOutboundIPRanges}).String(); got != "10.0.0.0/8,fd00::/8" {
		t.Errorf("ranges = %s, want host bits cleared and duplicates dropped: 10.0.0.0/8,fd00::/8", got)
	}
	if got := joinUints(c.ExcludeOutboundPorts); got != "80,443" {
		t.Errorf("ports = %s, want 80,443", got)
	}
	if def, _ := InterceptionOf(nil, InterceptionIPTables); def != InterceptionIPTables {
		t.Errorf("no annotation: interception %q, want the default", def)
	}
}
