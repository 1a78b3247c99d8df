package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestCommandName(t *testing.T) {
	for argv0, want := range map[string]string{
		"weft": "weft", "/usr/local/bin/weft": "weft", "bin/kubectl-weft": "kubectl weft",
		"kubectl_weft": "kubectl weft", `C:\bin\kubectl-weft.exe`: "weft", "kubectl-weft.exe": "kubectl weft",
		"weft-dev": "weft",
	} {
		if got := CommandName(argv0); got != want {
			t.Errorf("CommandName(%q) = %q, want %q", argv0, got, want)
		}
	}
}

// Under the plugin name, help and errors say "kubectl weft", so users copy working commands.
func TestPluginName(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main("/usr/local/bin/kubectl-weft", []string{"proxy-status", "--help"}, Streams{Out: &out, Err: &errb}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "kubectl weft proxy-status [pod] [flags]") {
		t.Errorf("plugin help does not show `kubectl weft proxy-status`:\n%s", out.String())
	}
	out.Reset()
	if code := Main("kubectl-weft", []string{"describe", "pod/x"}, Streams{Out: &out, Err: &errb}); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.HasPrefix(errb.String(), "kubectl weft: unknown kind \"pod\"") {
		t.Errorf("plugin error = %q", errb.String())
	}
}

func TestCompletion(t *testing.T) {
	for shell, marker := range map[string]string{"bash": "__start_weft", "zsh": "#compdef weft", "fish": "complete -c weft"} {
		var out, errb bytes.Buffer
		if code := Main("weft", []string{"completion", shell}, Streams{Out: &out, Err: &errb}); code != 0 {
			t.Fatalf("completion %s: exit %d: %s", shell, code, errb.String())
		}
		if !strings.Contains(out.String(), marker) {
			t.Errorf("completion %s lacks %q", shell, marker)
		}
	}
	// Dynamic completion (what the scripts call): the types after a pod, the kinds for describe.
	var out, errb bytes.Buffer
	Main("weft", []string{"__complete", "proxy-config", "productpage-1", ""}, Streams{Out: &out, Err: &errb})
	for _, want := range []string{"clusters\n", "endpoints\n", "listeners\n", "routes\n", "secrets\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("proxy-config completion lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	Main("weft", []string{"__complete", "describe", ""}, Streams{Out: &out, Err: &errb})
	if !strings.Contains(out.String(), "mfn/\n") || !strings.Contains(out.String(), "meshroute/\n") {
		t.Errorf("describe completion:\n%s", out.String())
	}
	out.Reset()
	Main("weft", []string{"__complete", "proxy-status", "-o", ""}, Streams{Out: &out, Err: &errb})
	if !strings.Contains(out.String(), "wide\n") || !strings.Contains(out.String(), "yaml\n") {
		t.Errorf("-o completion:\n%s", out.String())
	}
	var bad bytes.Buffer
	if code := Main("weft", []string{"completion", "tcsh"}, Streams{Out: &bad, Err: &bad}); code != 1 {
		t.Errorf("completion tcsh: exit %d, want 1", code)
	}
}
