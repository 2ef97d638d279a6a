#!/usr/bin/env bash
# The whole test suite: what a new user runs, and exactly what CI runs (.ci/run).
#
# Installs what the tests need when it is missing (Python's websockets package, for
# the interoperability test), then runs every unit, property and end-to-end test, and
# each criterion bench once in test mode so the benches keep compiling and running.
set -euo pipefail
cd "$(dirname "$0")/.."

# The interoperability tests drive the server with a client nobody here wrote. They
# fail without Python's websockets package (WSGATE_SKIP_INTEROP=1 skips them), so it is
# installed here when missing.
if ! python3 -c "import websockets.sync.client" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "websockets>=13"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets --locked 2>&1 | tee "$log" || status=$?

# One closing line over every test binary (the last binary cargo runs may have none).
passed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
