#!/usr/bin/env bash
# hack/e2e-summary.sh LOG — what failed in an end-to-end run, from its `go test -v` output:
# the failed tests with their last log lines, the tests still running when `go test -timeout`
# fired, and the goroutines of the test code in its dump (where each was blocked).
set -euo pipefail
log="$1"
echo
echo "=== e2e summary (whole output: $log)"
grep -E '^\s*--- FAIL' "$log" || echo "no test reported FAIL"
if grep -q '^panic: test timed out' "$log"; then
  grep -m1 '^panic: test timed out' "$log"
  # The list of tests running at the timeout, with how long each had run.
  awk '/^\trunning tests:/ {on=1; print; next} on && /^\t\t/ {print; next} on {exit}' "$log"
  echo "--- goroutines in test code at the timeout (first 400 lines)"
  awk 'BEGIN {RS=""} /^goroutine [0-9]+ / && /weft\/test\/e2e\./ {print; print ""}' "$log" | head -n 400
fi
# The log lines each failed test wrote, so a short CI tail still shows why.
for t in $(grep -oE '^--- FAIL: [A-Za-z0-9_]+' "$log" | awk '{print $3}' | sort -u); do
  echo "--- last lines of $t"
  awk -v t="$t" '$0 ~ "^=== RUN   "t"$" {on=1} on {print} on && $0 ~ "^--- FAIL: "t" " {exit}' "$log" | tail -n 60
done
