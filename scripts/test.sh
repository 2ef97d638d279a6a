#!/usr/bin/env bash
# The whole test suite: what a new user runs, and exactly what CI runs (.ci/run).
#
# Installs what the tests need when it is missing (nothing beyond the Rust toolchain
# yet), then runs every unit, property and end-to-end test, and each criterion bench
# once in test mode so the benches keep compiling and running.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-targets --locked
