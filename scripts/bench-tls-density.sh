#!/usr/bin/env bash
# Idle-connection memory of wss:// next to ws://, one fresh server per run.
#
# Usage: scripts/bench-tls-density.sh [COUNT...]     (default: 10000 19000)
#
# Builds the release binary, makes a throw-away P-256 certificate for localhost,
# then for each COUNT runs one server for ws:// and one for wss:// (2 shards, echo
# off, pings every 10 minutes so the hold is idle) and holds COUNT connections from
# scripts/tls_density.py in another process, which prints the server's RSS growth per
# connection and the handshake rate (the Python client's limit, not the server's).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10000 19000)
[ -n "${WSGATE_BIN:-}" ] || cargo build --release --locked --bin wsgate >/dev/null
bin=${WSGATE_BIN:-target/release/wsgate}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null
for count in "${counts[@]}"; do
  for mode in ws wss; do
    "$bin" --auth-mode none --shards 2 --max-connections 40000 \
      --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090 \
      --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --tls-listen 127.0.0.1:18443 \
      --ping-interval 10m --idle-timeout 20m 2>"$dir/server.log" &
    pid=$!
    sleep 1
    if [ "$mode" = wss ]; then
      python3 scripts/tls_density.py --pid "$pid" --port 18443 --ca "$dir/cert.pem" --count "$count" || true
    else
      python3 scripts/tls_density.py --pid "$pid" --port 18080 --count "$count" || true
    fi
    kill -TERM "$pid"; kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    sleep 2
  done
done
