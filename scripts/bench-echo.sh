#!/usr/bin/env bash
# Echo throughput and latency, wsgate side by side with other servers, same client,
# same run.
#
#   scripts/bench-echo.sh [--connections 100] [--sizes 32,512] [--in-flight 1]
#                         [--duration 10s] [--compare 'NAME=COMMAND URL'] ...
#
# Builds wsgate in release mode, starts it with --echo (auth off: a benchmark), runs
# `wsgate bench echo` for each message size, then does the same for every --compare
# server: COMMAND is started in the background, URL is where it listens, e.g.
#   --compare 'tokio-tungstenite=/path/to/tt-echo 127.0.0.1:18081 ws://127.0.0.1:18081/'
# Prints one table: messages per second and round-trip p50/p99/p99.9 per server and size.
# Stops only what it started, by PID. Needs no root; `scripts/tune-kernel.sh check`
# shows settings that matter for many connections.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
connections=100
sizes=32,512
in_flight=1
duration=10s
compares=()
while [ $# -gt 0 ]; do
  case $1 in
    --connections) connections=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --in-flight) in_flight=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --compare) compares+=("$2"); shift 2 ;;
    *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done

cargo build --release --quiet --manifest-path "$here/Cargo.toml"
wsgate="$here/target/release/wsgate"
out=$(mktemp -d /tmp/bench-echo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]:-}"; do
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${pids[@]:-}"; do
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

run_server() { # NAME URL: run the client for each size against URL
  local name=$1 url=$2 size
  for size in ${sizes//,/ }; do
    "$wsgate" bench echo --url "$url" --connections "$connections" --size "$size" \
      --in-flight "$in_flight" --duration "$duration" --json > "$out/$name-$size.json"
    python3 - "$name" "$size" "$out/$name-$size.json" <<'PY'
import json, sys
name, size, path = sys.argv[1:]
r = json.load(open(path))
lat = r.get("rtt") or {}
fmt = lambda k: f"{lat[k]:>8.0f}" if k in lat else "       ?"
fails = sum(r.get("failures", {}).values()) + r.get("unanswered", 0)
print(f"{name:<18} {size:>5} B {r['established']:>5} conns {r['messages_per_sec']:>12,.0f} msg/s"
      f"   p50 {fmt('p50_us')} µs  p99 {fmt('p99_us')} µs  p99.9 {fmt('p999_us')} µs  failures {fails}")
PY
  done
}

echo "wsgate bench echo: $connections connections, $in_flight in flight each, $duration per run" >&2
port=18090
"$wsgate" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:18091 --echo --auth-mode none \
  --upgrade-rate-per-ip 0 --message-rate 0 > "$out/wsgate.log" 2>&1 &
pids+=($!)
wait_port "127.0.0.1:$port"
run_server wsgate "ws://127.0.0.1:$port/ws"
kill -TERM "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

for spec in "${compares[@]:-}"; do
  [ -n "$spec" ] || continue
  name=${spec%%=*}
  rest=${spec#*=}
  url=${rest##* }
  command=${rest% *}
  $command > "$out/$name.log" 2>&1 &
  pids+=($!)
  hostport=${url#ws://}; hostport=${hostport%%/*}
  wait_port "$hostport"
  run_server "$name" "$url"
  kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done
echo "raw reports in $out" >&2
