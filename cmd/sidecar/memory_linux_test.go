package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// fileRSS is the resident size of this process's file-backed pages, in kB.
func fileRSS(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps_rollup")
	if err != nil {
		t.Fatalf("reading /proc/self/smaps_rollup (Linux 4.14+): %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss_File:"); ok {
			n, _ := strconv.Atoi(strings.Fields(rest)[0])
			return n
		}
	}
	t.Fatal("no Pss_File line in /proc/self/smaps_rollup")
	return 0
}

// The test binary links much of what the sidecar does; dropping its read-only pages
// must shrink its resident file pages and leave the program working.
func TestReleaseStartupMemory(t *testing.T) {
	before := fileRSS(t)
	n, err := releaseStartupMemory()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no read-only mapping of the executable found in /proc/self/maps")
	}
	after := fileRSS(t)
	if after >= before {
		t.Fatalf("resident file pages %d kB → %d kB, want fewer", before, after)
	}
	// Code that was dropped is faulted back in from the executable: still runs.
	if _, err := nodeFor(flags{namespace: "ns", pod: "p", labels: "a=b"}); err != nil {
		t.Fatalf("nodeFor after release: %v", err)
	}
	t.Logf("released %d bytes of mappings; resident file pages %d kB → %d kB", n, before, after)
}
