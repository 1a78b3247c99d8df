// This file has no build tag: TestThresholdsAgreeWithBash and TestLoadThresholdsRefusesBadInput
// need no mesh and run with plain `go test ./test/e2e`. (Not the package comment: that is in main_test.go.)

package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// thresholdsFile holds the pass marks the e2e tests share with hack/demo.sh, which sources
// it; the path is relative to this package's directory, where go test runs.
const thresholdsFile = "testdata/thresholds.env"

// thresholds are the pass marks of the mesh scenarios; each field is documented in
// thresholdsFile under its NAME.
type thresholds struct {
	CanaryCalls, CanaryV1Min, CanaryV1Max        int
	RetryCalls, RetryDirectFailedMin, RetryOKMin int
	FaultCalls, FaultAbortMin, FaultAbortMax     int
	TimeoutCalls, TimeoutQuickMS, TimeoutSlowMS  int
	BurstCalls                                   int
}

// th is loaded by TestMain before any test runs.
var th thresholds

// fields maps each NAME in thresholdsFile to the field it fills.
func (t *thresholds) fields() map[string]*int {
	return map[string]*int{
		"CANARY_CALLS": &t.CanaryCalls, "CANARY_V1_MIN": &t.CanaryV1Min, "CANARY_V1_MAX": &t.CanaryV1Max,
		"RETRY_CALLS": &t.RetryCalls, "RETRY_DIRECT_FAILED_MIN": &t.RetryDirectFailedMin, "RETRY_OK_MIN": &t.RetryOKMin,
		"FAULT_CALLS": &t.FaultCalls, "FAULT_ABORT_MIN": &t.FaultAbortMin, "FAULT_ABORT_MAX": &t.FaultAbortMax,
		"TIMEOUT_CALLS": &t.TimeoutCalls, "TIMEOUT_QUICK_MS": &t.TimeoutQuickMS, "TIMEOUT_SLOW_MS": &t.TimeoutSlowMS,
		"BURST_CALLS": &t.BurstCalls,
	}
}

// loadThresholds reads path (NAME=integer lines, # comments); every known NAME must appear
// exactly once and nothing else may.
func loadThresholds(path string) (thresholds, error) {
	var t thresholds
	f, err := os.Open(path)
	if err != nil {
		return t, fmt.Errorf("opening thresholds %s: %w", path, err)
	}
	defer f.Close()
	fields, seen := t.fields(), map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		p, known := fields[name]
		switch {
		case !ok:
			return t, fmt.Errorf("thresholds %s:%d: %q is not NAME=integer", path, n, line)
		case !known:
			return t, fmt.Errorf("thresholds %s:%d: unknown name %q", path, n, name)
		case seen[name]:
			return t, fmt.Errorf("thresholds %s:%d: %s given twice", path, n, name)
		}
		if *p, err = strconv.Atoi(value); err != nil {
			return t, fmt.Errorf("thresholds %s:%d: %s: %w", path, n, name, err)
		}
		seen[name] = true
	}
	if err := sc.Err(); err != nil {
		return t, fmt.Errorf("reading thresholds %s: %w", path, err)
	}
	for name := range fields {
		if !seen[name] {
			return t, fmt.Errorf("thresholds %s: %s is missing", path, name)
		}
	}
	return t, nil
}

// TestThresholdsAgreeWithBash checks that bash, sourcing the file as hack/demo.sh does, reads
// every threshold as the Go loader does (a value bash would split, quote or expand differently
// fails here), and that hack/demo.sh sources the file.
func TestThresholdsAgreeWithBash(t *testing.T) {
	got, err := loadThresholds(thresholdsFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range got.fields() {
		out, err := exec.Command("bash", "-euc", `source "$1"; printf %s "${!2}"`, "bash", thresholdsFile, name).CombinedOutput()
		if err != nil {
			t.Fatalf("bash sourcing %s for %s: %v: %s", thresholdsFile, name, err, out)
		}
		if string(out) != strconv.Itoa(*p) {
			t.Errorf("%s: bash reads %q, Go reads %d", name, out, *p)
		}
	}
	demo, err := os.ReadFile(filepath.Join("..", "..", "hack", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(demo), "test/e2e/"+thresholdsFile) {
		t.Errorf("hack/demo.sh does not source test/e2e/%s", thresholdsFile)
	}
}

func TestLoadThresholdsRefusesBadInput(t *testing.T) {
	good, err := os.ReadFile(thresholdsFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"unknown name", string(good) + "CANARY_TYPO=3\n", `unknown name "CANARY_TYPO"`},
		{"twice", string(good) + "FAULT_CALLS=400\n", "FAULT_CALLS given twice"},
		{"not an integer", strings.Replace(string(good), "RETRY_OK_MIN=198", "RETRY_OK_MIN=1e2", 1), "RETRY_OK_MIN"},
		{"no equals sign", string(good) + "BURST_CALLS\n", "is not NAME=integer"},
		{"missing", strings.Replace(string(good), "BURST_CALLS=200", "", 1), "BURST_CALLS is missing"},
	} {
		path := filepath.Join(t.TempDir(), "thresholds.env")
		if err := os.WriteFile(path, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadThresholds(path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}
