#!/usr/bin/env bash
# The whole test suite: what a new user runs, and exactly what CI runs (.ci/run).
#
# Installs what the tests need when it is missing (Python's websockets package, for
# the interoperability test; redis-server, for the Redis client tests; chromium, for
# the browser tests; Node.js and the pinned npm packages, for the JavaScript client's
# tests), then runs every unit, property and end-to-end test, each criterion bench once
# in test mode so the benches keep compiling and running, and the JavaScript client's
# tests on Node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."

# The interoperability tests drive the server with a client nobody here wrote. They
# fail without Python's websockets package (WSGATE_SKIP_INTEROP=1 skips them), so it is
# installed here when missing.
if ! python3 -c "import websockets.sync.client" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "websockets>=13"
fi

# The Redis client tests (src/cluster) start their own redis-server on loopback and
# fail, saying so, without one: it is installed here when missing (Debian's package).
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing and cannot be installed here (needs root and apt-get):" >&2
    echo "install it with: apt-get install -y redis-server" >&2
    exit 1
  fi
  if ! apt-get install -y -qq redis-server >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq redis-server >/dev/null || {
      echo "apt-get install -y redis-server failed: the src/cluster tests need it" >&2
      exit 1
    }
  fi
fi

# The browser test (src/server/tests_deflate.rs) drives a real headless Chromium and
# fails, saying so, without one (WSGATE_SKIP_BROWSER=1 skips it): Debian's package is
# installed here when missing.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing and cannot be installed here (needs root and apt-get):" >&2
    echo "install it with: apt-get install -y chromium (or set WSGATE_SKIP_BROWSER=1)" >&2
    exit 1
  fi
  if ! apt-get install -y -qq chromium >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq chromium >/dev/null || {
      echo "apt-get install -y chromium failed: the browser test needs it" >&2
      exit 1
    }
  fi
fi

# The JavaScript client's tests (src/client/*.test.mjs) run on Node's test runner; the
# browser test drives Debian's chromium through playwright-core, pinned in
# src/client/package-lock.json. Node.js is installed here when missing (the machine's
# apt source; playwright-core needs Node 20 or later), and the pinned packages when
# src/client/node_modules lacks them.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "node and npm are missing and cannot be installed here (needs root and apt-get):" >&2
    echo "install Node.js 20 or later with npm" >&2
    exit 1
  fi
  apt-get install -y -qq nodejs >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq nodejs >/dev/null || true
  }
  if ! command -v npm >/dev/null 2>&1; then
    apt-get install -y -qq npm >/dev/null || true
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm with apt-get failed: the JavaScript client's tests need them" >&2
    exit 1
  fi
fi
if [ ! -f src/client/node_modules/playwright-core/package.json ]; then
  npm ci --prefix src/client --no-audit --no-fund --loglevel=error
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets --locked 2>&1 | tee "$log" || status=$?

# The JavaScript client: its unit tests, then the browser test, which starts the gateway
# binary as a child process. The debug binary: cargo test built everything it needs (this
# build is a no-op after it), and the test exchanges a dozen messages, where a release
# build would add minutes.
js_log=$(mktemp)
trap 'rm -f "$log" "$js_log"' EXIT
cargo build --locked --quiet || status=$?
node --test --test-reporter=tap src/client/sdk.test.mjs src/client/browser.test.mjs 2>&1 | tee "$js_log" || status=$?

# One closing line over every test binary (the last binary cargo runs may have none).
passed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$log" | awk '{s+=$1} END {print s+0}')
js_passed=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$js_log" | tail -1)
js_failed=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$js_log" | tail -1)
passed=$((passed + ${js_passed:-0}))
failed=$((failed + ${js_failed:-0}))
echo
echo "tests: $passed passed, $failed failed"
exit "$status"
