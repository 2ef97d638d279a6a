#!/usr/bin/env bash
# Idle-connection memory and handshake rate of wss:// next to ws://, one fresh server
# per run, the load generator in another process.
#
# Usage: scripts/bench-tls-density.sh [COUNT...]     (default: 10000 19000)
#   RATE=2000/s  connects per second asked of the bench (default 2000/s)
#   HOLD=20s     how long connections are held idle before the memory is read
#   WSGATE_BIN   a prebuilt binary (default: build target/release/wsgate)
#
# Makes a throw-away P-256 certificate for localhost, then for each COUNT runs one
# server for ws:// and one for wss:// (same flags, 2 shards, pings every 10 minutes so
# the hold is idle), and `wsgate bench density --server-pid` prints the server's RSS
# growth per connection, the handshake rate and latency. Full TLS handshakes: the
# bench does not resume sessions unless --tls-resume is added (RESUME=1).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(10000 19000)
rate=${RATE:-2000/s}
hold=${HOLD:-20s}
[ -n "${WSGATE_BIN:-}" ] || cargo build --release --locked --bin wsgate >/dev/null
bin=${WSGATE_BIN:-target/release/wsgate}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
  -addext extendedKeyUsage=serverAuth 2>/dev/null
resume=()
[ -z "${RESUME:-}" ] || resume=(--tls-resume)
for count in "${counts[@]}"; do
  for mode in ${MODES:-ws wss}; do
    "$bin" --auth-mode none --shards 2 --max-connections 40000 \
      --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090 \
      --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" --tls-listen 127.0.0.1:18443 \
      --ping-interval 10m --idle-timeout 20m 2>"$dir/server.log" &
    pid=$!
    sleep 1
    echo "== $count connections over $mode:// (server pid $pid)"
    if [ "$mode" = wss ]; then
      url="wss://localhost:18443/ws"
      tls=(--ca "$dir/cert.pem" "${resume[@]}")
    else
      url="ws://127.0.0.1:18080/ws"
      tls=()
    fi
    "$bin" bench density --url "$url" "${tls[@]}" --connections "$count" --rate "$rate" \
      --hold "$hold" --server-pid "$pid" --connect-timeout 30s || true
    # The server's view: TLS handshakes, resumptions and failures by reason.
    if command -v curl >/dev/null; then
      curl -s http://127.0.0.1:19090/metrics | grep -E '^wsgate_(tls_handshake|tls_resumed|handshake_failures)' || true
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    sleep 2
  done
done
