#!/usr/bin/env bash
# Room fan-out: S subscribers in one room, publishes at a fixed rate, deliveries per
# second and publish-to-delivery latency.
#
#   scripts/bench-fanout.sh [--subscribers 1000,10000,18000] [--publish-rate 100/s]
#                           [--publishers 1] [--size 100] [--duration 20s]
#
# Columns: publishes/s and deliveries/s in the window; publish-to-delivery percentiles
# over every delivery; publish-to-last-delivery per message; gaps (a member saw a later
# seq without an earlier one); late (window deliveries not received before the bench
# closed, after up to 10 s of drain).
#
# Builds wsgate in release mode, starts one gateway (2 shards, auth off: a benchmark,
# users named by ?user=) and, for each subscriber count, runs `wsgate bench fanout`
# against it, then prints one table. Stops only what it started, by PID; every run is
# bounded by the bench's own limits.
#
# STORE=memory runs the gateway with --store memory (default: the disk store, in a fresh
# data directory under the output directory).
#
# Why not 100,000 members here: this box caps every process at 20,000 open files
# (RLIMIT_NOFILE, not raisable without CAP_SYS_RESOURCE), so one bench process holds at
# most ~19,900 sockets and one gateway process as many. Rooms live inside one gateway
# process (shards of one process share them over the mesh rings); across processes they
# need the cross-box bus (Redis), which does not exist yet. So the largest honest room
# here is ~18,000 members on one gateway fed by one bench process.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
subscribers=1000,10000,18000
publish_rate=100/s
publishers=1
size=100
duration=20s
while [ $# -gt 0 ]; do
  case $1 in
    --subscribers) subscribers=$2; shift 2 ;;
    --publish-rate) publish_rate=$2; shift 2 ;;
    --publishers) publishers=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done

nofile=$(ulimit -n)
for s in ${subscribers//,/ }; do
  if [ "$((s + publishers + 100))" -gt "$nofile" ]; then
    echo "bench-fanout: $s subscribers need more than this process's $nofile open files;" \
      "raise it (scripts/tune-kernel.sh apply) or ask for fewer" >&2
    exit 2
  fi
done

cargo build --release --quiet --manifest-path "$here/Cargo.toml"
wsgate="$here/target/release/wsgate"
out=$(mktemp -d /tmp/bench-fanout.XXXXXX)
server_pid=
cleanup() {
  stop_pid "$server_pid"
}
trap cleanup EXIT INT TERM

port=18190
echo "bench-fanout: one gateway (2 shards), one bench process; subscribers $subscribers," \
  "$publishers publisher(s) at $publish_rate, $size B, $duration each" >&2
echo "bench-fanout: 100,000 members would need 5+ processes on each side here (20,000 open" \
  "files per process) and rooms spanning gateway processes (not before the Redis bus)" >&2
rm -rf "$out/data"
"$wsgate" serve --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:18191 --shards 2 \
  --store "${STORE:-disk}" --data-dir "$out/data" \
  --auth-mode none --upgrade-rate-per-ip 0 --message-rate 0 --max-connections-per-user 0 \
  --max-connections 19900 --handshake-timeout 30s --max-handshakes-per-shard 8192 > "$out/wsgate.log" 2>&1 &
server_pid=$!
wait_port "127.0.0.1:$port"

printf '%-8s %12s %14s %10s %10s %10s %12s %12s %6s %7s\n' members "publishes/s" "deliveries/s" \
  "p50 ms" "p99 ms" "p99.9 ms" "last p50 ms" "last p99 ms" gaps "late" > "$out/table.txt"
for s in ${subscribers//,/ }; do
  room="fanout-$s"
  status=0
  "$wsgate" bench fanout --url "ws://127.0.0.1:$port/ws" --subscribers "$s" \
    --publishers "$publishers" --room "$room" --publish-rate "$publish_rate" --size "$size" \
    --duration "$duration" --rate 5000/s --json > "$out/fanout-$s.json" || status=$?
  python3 - "$s" "$out/fanout-$s.json" "$status" >> "$out/table.txt" <<'PY'
import json, sys
s, path, status = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{s:<8} no report ({e}), exit {status}")
    sys.exit(0)
d = r.get("delivery_latency") or {}
l = r.get("last_delivery_latency") or {}
ms = lambda m, k: f"{m[k] / 1000:.2f}" if k in m else "?"
# Not delivered before the bench closed (after up to 10 s of drain); a gap is counted
# only when a member receives a later seq without an earlier one.
lost = r["expected_deliveries"] - r["delivered_of_window"]
print(f"{r['joined']:<8} {r['publishes_per_sec']:>12,.0f} {r['deliveries_per_sec']:>14,.0f} "
      f"{ms(d, 'p50_us'):>10} {ms(d, 'p99_us'):>10} {ms(d, 'p999_us'):>10} "
      f"{ms(l, 'p50_us'):>12} {ms(l, 'p99_us'):>12} {r['gaps']:>6} {lost:>7}"
      + ("" if status == "0" else f"   (exit {status}: see {path})"))
PY
done
cat "$out/table.txt"
echo "raw reports and the gateway's log in $out" >&2
