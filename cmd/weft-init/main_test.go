package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// TestMain lets the netns tests run this test binary as weft-init inside a network
// namespace (ip netns exec <ns> <test binary> --flags), without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("WEFT_INIT_AS_MAIN") == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func runInProcess(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestDryRunPrintsRulesWithoutIptables(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no iptables: a dry run must not need it
	code, out, errOut := runInProcess("--dry-run", "--ipv6", "--exclude-outbound-ports=5432", "--include-inbound-ports=8080")
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errOut)
	}
	for _, want := range []string{
		"# IPv4: iptables-restore --noflush\n*nat\n",
		"# IPv6: ip6tables-restore --noflush\n*nat\n",
		"-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN\n",
		"-A WEFT_INBOUND -p tcp --dport 8080 -j WEFT_IN_REDIRECT\n",
		"-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n",
		"-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
}

func TestMissingIptablesFailsWithAClearMessage(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	code, _, errOut := runInProcess()
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(errOut, "iptables-save is not installed") || !strings.Contains(errOut, "image must contain iptables") {
		t.Fatalf("stderr %q does not say iptables is missing and what to do", errOut)
	}
	code, _, errOut = runInProcess("--iptables=legacy", "--ipv6")
	if code != 1 || !strings.Contains(errOut, "iptables-legacy-save is not installed") {
		t.Fatalf("legacy mode: exit %d, stderr %q", code, errOut)
	}
}

func TestBadFlagsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{"--exclude-outbound-ports=http"},
		{"--include-outbound-ip-ranges=10.0.0.0/33"},
		{"--exclude-outbound-ip-ranges=*"},
		{"--outbound-port=0"},
		{"--proxy-uid="},
		{"--iptables=ebtables"},
		{"stray"},
	} {
		code, _, errOut := runInProcess(append([]string{"--dry-run"}, args...)...)
		if code != 2 || errOut == "" {
			t.Errorf("%v: exit %d stderr %q, want exit 2 with a message", args, code, errOut)
		}
	}
}
