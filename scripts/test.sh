#!/usr/bin/env bash
# Runs the test suite and prints a final "N passed, N failed" line; exits with dotnet test's status.
# Extra arguments go to dotnet test (e.g. --filter "Category!=Slow").
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
dotnet test SoftPrompt.sln -c Release --nologo "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -Eo 'Passed: +[0-9]+' "$log" | awk '{s+=$2} END {print s+0}')
failed=$(grep -Eo 'Failed: +[0-9]+' "$log" | awk '{s+=$2} END {print s+0}')
rm -f "$log"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # build error: count it as a failure
echo "$passed passed, $failed failed"
exit "$rc"
