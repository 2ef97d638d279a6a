#!/usr/bin/env bash
# Measures how many idle WebSocket connections wsgate holds on this box and what each
# one costs, with server and load generator on the same machine (loopback).
#
#   scripts/bench-density.sh [--connections N] [--hold 60s] [--rate 20000] [--tune] [--out DIR]
#
#   --connections N     connections to open and hold (default 100000)
#   --hold DURATION     how long to hold them once established: 60s, 2m (default 60s)
#   --rate R            connects started per second, all bench processes together (default 20000)
#   --tune              (root) apply sysctl/99-wsgate.conf for N connections first and
#                       revert it on exit
#   --out DIR           where samples, reports and the plot go (default /tmp/density-DATE)
#   --port P            WebSocket port the servers share (default 38080; must be free)
#   --admin-port P      first admin port; server i uses P+i (default 39100; must be free)
#   --per-process N     connections per process in group mode (default 18000)
#   --ping-interval D   server ping interval (default: hold/3, at most 20s)
#   --idle-timeout D    server idle timeout (default: 2.5 x the ping interval)
#   --connect-timeout D connect() to 101 per attempt (default 30s); each bench's ramp
#                       ends at N/rate + this + 10 s, whatever was reached by then
#   --users             every connection an authenticated user of its own: the servers
#                       verify HS256 tokens (a throw-away secret in DIR), each bench
#                       mints one per connection for user b<k>-<n> (the messenger's case;
#                       default: anonymous connections)
#   --shards-per-process N  shards of each server in group mode (default 1: the group's
#                       processes already spread over the cores, and every extra shard
#                       is a thread to schedule and a tick to run)
#
# What it does: builds the release binary, prints `scripts/tune-kernel.sh check`, picks a
# mode from the hard open-files limit (one server process if one process can hold N,
# else a group of server processes sharing the port through SO_REUSEPORT), starts the
# servers and as many `wsgate bench density --json` processes as the limit needs (each
# with its own source addresses), samples connections, server RSS and kernel memory every
# 2 s into $OUT/samples.csv, measures the servers' CPU over 10 s of the hold, collects
# the bench reports, prints a summary table ($OUT/summary.json) and draws
# $OUT/density.svg (and density.png when rsvg-convert or ImageMagick is installed).
#
# Only processes this script started are signalled, by PID. Every wait is bounded.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/target/release/wsgate"

connections=100000
hold=60s
rate=20000
tune=0
out=""
port=38080
admin_base=39100
per_process=18000
ping_interval=""
idle_timeout=""
connect_timeout=30s
users=0
group_shards=1

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
need() { [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case $1 in
    --connections) need "$@"; connections=$2; shift 2 ;;
    --hold) need "$@"; hold=$2; shift 2 ;;
    --rate) need "$@"; rate=$2; shift 2 ;;
    --tune) tune=1; shift ;;
    --out) need "$@"; out=$2; shift 2 ;;
    --port) need "$@"; port=$2; shift 2 ;;
    --admin-port) need "$@"; admin_base=$2; shift 2 ;;
    --per-process) need "$@"; per_process=$2; shift 2 ;;
    --ping-interval) need "$@"; ping_interval=$2; shift 2 ;;
    --idle-timeout) need "$@"; idle_timeout=$2; shift 2 ;;
    --connect-timeout) need "$@"; connect_timeout=$2; shift 2 ;;
    --users) users=1; shift ;;
    --shards-per-process) need "$@"; group_shards=$2; shift 2 ;;
    --connections=*|--hold=*|--rate=*|--out=*|--port=*|--admin-port=*|--per-process=*|--ping-interval=*|--idle-timeout=*|--connect-timeout=*|--shards-per-process=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done

# Seconds from 45s, 2m, 45.
seconds() {
  if [[ $1 =~ ^([0-9]+)s?$ ]]; then echo "${BASH_REMATCH[1]}"
  elif [[ $1 =~ ^([0-9]+)m$ ]]; then echo $(( BASH_REMATCH[1] * 60 ))
  else echo "not a duration in whole seconds or minutes: $1 (use 45s or 2m)" >&2; exit 2
  fi
}
for v in connections rate port admin_base per_process group_shards; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "--${v//_/-} must be a positive whole number (got ${!v})" >&2; exit 2; }
done
hold_s=$(seconds "$hold")
[ "$hold_s" -ge 1 ] || { echo "--hold must be at least 1s" >&2; exit 2; }
if [ -z "$ping_interval" ]; then
  p=$(( hold_s / 3 )); [ "$p" -gt 20 ] && p=20; [ "$p" -lt 2 ] && p=2
  ping_interval=${p}s
fi
ping_s=$(seconds "$ping_interval")
[ -n "$idle_timeout" ] || idle_timeout=$(( ping_s * 5 / 2 ))s
idle_s=$(seconds "$idle_timeout")
[ "$idle_s" -gt "$ping_s" ] || { echo "--idle-timeout must be longer than --ping-interval" >&2; exit 2; }
connect_timeout=$(seconds "$connect_timeout")
[ "$connect_timeout" -ge 1 ] || { echo "--connect-timeout must be at least 1s" >&2; exit 2; }

[ -n "$out" ] || out=/tmp/density-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
out=$(cd "$out" && pwd)
case $out/ in "$here"/*) echo "--out must be outside the repository ($here)" >&2; exit 2 ;; esac
exec > >(tee -a "$out/run.log") 2>&1
say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%d", b - a }'; }

say "bench-density: $connections connections, hold $hold, rate $rate/s, output in $out"

# ---------------------------------------------------------------------------------------
# Cleanup: only what we started, by PID; bounded.
# ---------------------------------------------------------------------------------------
server_pids=()
bench_pids=()
sampler_pid=""
tuned=0
ours() { # a child of this shell that has not exited
  local pid=$1 s st ppid
  [ -n "$pid" ] || return 1
  { read -r s < "/proc/$pid/stat"; } 2> /dev/null || return 1
  s=${s##*) }; st=${s%% *}; s=${s#* }; ppid=${s%% *}
  [ "$ppid" = "$$" ] && [ "$st" != Z ] && [ "$st" != X ]
}
stop_pids() { # stop_pids SECONDS PID...: SIGTERM, wait up to SECONDS, then SIGKILL
  local grace=$1; shift
  local pid live=()
  for pid in "$@"; do ours "$pid" && kill -TERM "$pid" 2> /dev/null && live+=("$pid"); done
  [ ${#live[@]} -gt 0 ] || return 0
  local until=$(( SECONDS + grace ))
  while [ $SECONDS -lt $until ]; do
    local left=()
    for pid in "${live[@]}"; do ours "$pid" && left+=("$pid"); done
    [ ${#left[@]} -gt 0 ] || break
    sleep 0.5
  done
  for pid in "${live[@]}"; do
    if ours "$pid"; then
      say "process $pid did not stop within ${grace}s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${live[@]}"; do wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$sampler_pid" ] && { touch "$out/.stop"; stop_pids 5 "$sampler_pid"; }
  [ ${#bench_pids[@]} -gt 0 ] && stop_pids 10 "${bench_pids[@]}"
  [ ${#server_pids[@]} -gt 0 ] && stop_pids 20 "${server_pids[@]}"
  if [ "$tuned" = 1 ]; then
    say "reverting the kernel settings"
    "$here/scripts/tune-kernel.sh" revert
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------------------
# Build, tune, check.
# ---------------------------------------------------------------------------------------
say "building the release binary"
(cd "$here" && timeout 20m cargo build --release --quiet)
[ -x "$bin" ] || { echo "no binary at $bin" >&2; exit 1; }

if [ "$tune" = 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "--tune needs root" >&2; exit 1; }
  if [ -e "${WSGATE_STATE_DIR:-/var/lib/wsgate}/sysctl-saved.conf" ]; then
    say "kernel settings were already applied by someone else (a saved copy exists): applying on top, not reverting"
    "$here/scripts/tune-kernel.sh" apply --connections "$connections" || say "some settings could not be applied (see above)"
  else
    tuned=1
    "$here/scripts/tune-kernel.sh" apply --connections "$connections" || say "some settings could not be applied (see above)"
  fi
fi
say "scripts/tune-kernel.sh check --connections $connections"
"$here/scripts/tune-kernel.sh" check --connections "$connections" || say "(check exited $?: see CANNOT lines above; the mode below works around the open-files limit)"

# ---------------------------------------------------------------------------------------
# Mode.
# ---------------------------------------------------------------------------------------
cpus=$(nproc)
hard=$(ulimit -Hn)
reserve=1100
read -r port_lo port_hi < /proc/sys/net/ipv4/ip_local_port_range
ports_per_ip=$(( port_hi - port_lo + 1 ))
if [ "$hard" = unlimited ] || [ $(( connections + reserve )) -le "$hard" ]; then
  mode=single
  servers=1
  shards=$cpus
  # Each shard takes max/shards and SO_REUSEPORT fills them unevenly: 10% spare so a
  # full shard does not answer 503 while another has room (the fd limit still caps it).
  server_max=$(( connections * 110 / 100 + shards ))
  bench_cap=$connections
  [ "$hard" != unlimited ] && bench_cap=$(( hard - reserve ))
  benches=$(( (connections + bench_cap - 1) / bench_cap ))
  why="the hard open-files limit ($hard) holds $connections connections + $reserve in one process"
else
  mode=group
  [ $(( hard - 2000 )) -lt "$per_process" ] && per_process=$(( hard - 2000 ))
  [ "$per_process" -ge 1000 ] || { echo "the hard open-files limit ($hard) is too small for group mode" >&2; exit 1; }
  shards=$(( group_shards < cpus ? group_shards : cpus ))
  # Over-provision by 10%: SO_REUSEPORT hashes each connection to one of the group's
  # listeners, so shards fill unevenly, and a full shard answers 503.
  servers=$(( (connections * 110 / 100 + per_process - 1) / per_process ))
  server_max=$per_process
  benches=$(( (connections + per_process - 1) / per_process ))
  why="one process may open at most $hard files (hard RLIMIT_NOFILE, cannot be raised here), fewer than $connections + $reserve"
fi
bench_workers=""
[ "$benches" -ge "$cpus" ] && bench_workers=1
per_bench=$(( (connections + benches - 1) / benches ))
ips_per_bench=$(( (per_bench + ports_per_ip - 1001) / (ports_per_ip - 1000) ))
[ "$ips_per_bench" -lt 4 ] && ips_per_bench=4
[ "$benches" -le 2800 ] && [ "$ips_per_bench" -le 254 ] || { echo "too many bench processes or source addresses" >&2; exit 1; }
close_timeout=$(( connections / 15000 )); [ "$close_timeout" -lt 10 ] && close_timeout=10; [ "$close_timeout" -gt 90 ] && close_timeout=90

echo
if [ "$mode" = single ]; then
  say "MODE: single server process ($shards shards, --max-connections $server_max) and $benches bench process(es)"
else
  say "MODE: group of $servers server processes on port $port (SO_REUSEPORT; $shards shards and --max-connections $server_max each, $(( servers * server_max )) slots for $connections: $(( (servers * server_max - connections) * 100 / connections ))% spare for the uneven hash) and $benches bench processes (<= $per_bench connections each)"
fi
say "  why: $why"
say "  server heartbeat: --ping-interval $ping_interval --idle-timeout $idle_timeout (hold $hold)"
echo

# Ports must be free: a stranger's SO_REUSEPORT listener on our port would take a share
# of our connections.
port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
port_busy "$port" && { echo "port $port is in use: pick another with --port" >&2; exit 1; }
for ((i = 0; i < servers; i++)); do
  port_busy $(( admin_base + i )) && { echo "admin port $(( admin_base + i )) is in use: pick another base with --admin-port" >&2; exit 1; }
done

# ---------------------------------------------------------------------------------------
# The helper: sampler, scrapes, CPU and the summary (Python, standard library).
# ---------------------------------------------------------------------------------------
helper="$out/helper.py"
cat > "$helper" <<'PY'
import concurrent.futures as cf
import glob
import json
import os
import re
import sys
import time
import urllib.request

SLABS = ["TCP", "TCPv6", "sock_inode_cache", "dentry", "filp", "io_kiocb", "eventpoll_epi", "eventpoll_pwq"]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PAGE = os.sysconf("SC_PAGE_SIZE")
TCK = os.sysconf("SC_CLK_TCK")


def servers(out):
    rows = []
    with open(os.path.join(out, "servers.tsv")) as f:
        for line in f:
            i, pid, port = line.split()
            rows.append((int(i), int(pid), int(port)))
    return rows


def metrics(port, timeout=3.0):
    """name -> {labels without shard: value}, and connections per shard."""
    text = OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    agg, shards = {}, {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        series, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        name, labels = (series.split("{", 1) + [""])[:2]
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
        rest = ",".join(f"{k}={val}" for k, val in pairs if k != "shard")
        agg.setdefault(name, {})
        agg[name][rest] = agg[name].get(rest, 0) + v
        if name == "wsgate_connections":
            shards[dict(pairs).get("shard", "?")] = int(v)
    return agg, shards


def status_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def slabs():
    found = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                w = line.split()
                if w and w[0] in SLABS:
                    found[w[0]] = {"active": int(w[1]), "num": int(w[2]), "objsize": int(w[3])}
    except OSError:
        pass
    return found


def sockstat():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                w = line.split()[1:]
                return {w[i]: int(w[i + 1]) for i in range(0, len(w) - 1, 2)}
    return {}


def netstat():
    lines = [l.split() for l in open("/proc/net/netstat")]
    for head, vals in zip(lines[0::2], lines[1::2]):
        if head[0] == "TcpExt:":
            d = dict(zip(head[1:], map(int, vals[1:])))
            return {k: d.get(k, 0) for k in ("ListenOverflows", "ListenDrops", "TCPAbortOnMemory", "TCPMemoryPressures")}
    return {}


def one(path, cast=int):
    try:
        return cast(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def host():
    mem = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        if k in ("MemAvailable", "Slab", "SUnreclaim"):
            mem[k] = int(v.split()[0]) * 1024
    return {
        "sockstat": sockstat(),
        "netstat": netstat(),
        "conntrack_count": one("/proc/sys/net/netfilter/nf_conntrack_count"),
        "conntrack_max": one("/proc/sys/net/netfilter/nf_conntrack_max"),
        "files_open": one("/proc/sys/fs/file-nr"),
        "meminfo": mem,
        "loadavg": one("/proc/loadavg", float),
        "cpu_pressure_some_avg10": pressure(),
    }


def pressure():
    try:
        line = open("/proc/pressure/cpu").readline()
        return float(re.search(r"avg10=([0-9.]+)", line).group(1))
    except (OSError, AttributeError, ValueError):
        return None


def kernel_bytes(sl, ss):
    # Bytes in use by the socket caches (objects in use x size: freed objects kept in
    # slabs from earlier runs do not count) plus TCP buffer pages. Host-wide: on
    # loopback this holds both ends of every connection.
    return sum(c["active"] * c["objsize"] for c in sl.values()) + ss.get("mem", 0) * PAGE


def scrape_all(out, pool, last=None):
    rows = []
    srv = servers(out)
    futs = {pool.submit(metrics, port): (i, pid, port) for i, pid, port in srv}
    for fut, (i, pid, port) in futs.items():
        try:
            agg, shards = fut.result(timeout=5)
            conns = int(sum(agg.get("wsgate_connections", {}).values()))
            hb = int(sum(agg.get("wsgate_heartbeat_timeouts_total", {}).values()))
            sent = int(sum(agg.get("wsgate_frames_sent_total", {}).values()))
            ok = True
        except Exception:
            conns, shards, ok, hb, sent = (last or {}).get(i, 0), {}, False, None, None
        rss = status_kib(pid)
        rows.append({"i": i, "pid": pid, "conns": conns, "ok": ok, "rss": rss * 1024 if rss is not None else None,
                     "shards": shards, "heartbeat_timeouts": hb, "frames_sent": sent})
    return rows


def cmd_sample(out, interval, deadline):
    pool = cf.ThreadPoolExecutor(16)
    start = time.time()
    last = {}
    with open(os.path.join(out, "samples.csv"), "w") as csv, open(os.path.join(out, "samples-detail.jsonl"), "w") as det:
        csv.write("seconds,connections,server_rss_bytes,kernel_bytes\n")
        csv.flush()
        while not os.path.exists(os.path.join(out, ".stop")) and time.time() < deadline:
            t = time.time()
            rows = scrape_all(out, pool, last)
            for r in rows:
                last[r["i"]] = r["conns"]
            conns = sum(r["conns"] for r in rows)
            rss = sum(r["rss"] or 0 for r in rows)
            sl, h = slabs(), host()
            kb = kernel_bytes(sl, h["sockstat"])
            csv.write(f"{t - start:.1f},{conns},{rss},{kb}\n")
            csv.flush()
            hb = sum(r["heartbeat_timeouts"] or 0 for r in rows)
            det.write(json.dumps({"t": round(t - start, 2), "epoch": t, "connections": conns, "server_rss": rss,
                                  "heartbeat_timeouts": hb,
                                  "kernel_bytes": kb, "scrapes_ok": sum(r["ok"] for r in rows), "servers": rows,
                                  "slabs": sl, **h}) + "\n")
            det.flush()
            tmp = os.path.join(out, ".latest.tmp")
            with open(tmp, "w") as f:
                f.write(f"{t - start:.1f} {conns} {sum(r['ok'] for r in rows)} {len(rows)}\n")
            os.replace(tmp, os.path.join(out, "latest"))
            time.sleep(max(0.0, t + interval - time.time()))


def cmd_scrape(out, name):
    pool = cf.ThreadPoolExecutor(16)
    total, per, errors = {}, [], 0
    srv = servers(out)
    futs = [(i, pool.submit(metrics, port, 5)) for i, _, port in srv]
    for i, fut in futs:
        try:
            agg, shards = fut.result()
        except Exception as e:
            errors += 1
            per.append({"i": i, "error": str(e)})
            continue
        per.append({"i": i, "connections": int(sum(agg.get("wsgate_connections", {}).values())), "shards": shards,
                    "heartbeat_timeouts": int(sum(agg.get("wsgate_heartbeat_timeouts_total", {}).values()))})
        for k, series in agg.items():
            for labels, v in series.items():
                total.setdefault(k, {})
                total[k][labels] = total[k].get(labels, 0) + v
    snap = {"epoch": time.time(), "totals": total, "servers": per, "scrape_errors": errors, "host": host()}
    json.dump(snap, open(os.path.join(out, f"metrics-{name}.json"), "w"), indent=1)
    conns = int(sum(total.get("wsgate_connections", {}).values()))
    hb = int(sum(total.get("wsgate_heartbeat_timeouts_total", {}).values()))
    print(f"metrics-{name}: {conns} connections over {len(per) - errors} servers ({errors} scrape errors), "
          f"heartbeat timeouts so far {hb}")


def cmd_why(out):
    """Where a ramp that fell short stood: rates, host limits, shards that stopped counting."""
    det = [json.loads(l) for l in open(os.path.join(out, "samples-detail.jsonl")) if l.strip()]
    last = det[-1]

    def rate(span):
        old = [d for d in det if d["t"] <= last["t"] - span]
        if not old:
            return None
        return (last["connections"] - old[-1]["connections"]) / (last["t"] - old[-1]["t"])

    mem = last["meminfo"]
    fmax = one("/proc/sys/fs/file-max")
    lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    print(f"  connections {last['connections']}; rate over the last 10 s {rate(10) or 0:.0f}/s, last 30 s {rate(30) or 0:.0f}/s")
    print(f"  CPU: load {last['loadavg']}, pressure (some, avg10) {last.get('cpu_pressure_some_avg10')}% on {os.cpu_count()} CPUs")
    print(f"  memory: MemAvailable {mem.get('MemAvailable', 0) >> 20} MiB, slab {mem.get('Slab', 0) >> 20} MiB")
    print(f"  files: {last['files_open']} open of fs.file-max {fmax}; conntrack {last['conntrack_count']} of {last['conntrack_max']}")
    print(f"  TCP: {last['sockstat']}; {last['netstat']}; source ports per address {hi - lo + 1}")
    changed = {}
    for d in det:
        for srv in d["servers"]:
            for shard, n in srv.get("shards", {}).items():
                key = (srv["i"], shard)
                if changed.get(key, (None, None))[0] != n:
                    changed[key] = (n, d["t"])
    grew = [d for d in det if d["t"] <= last["t"] - 15]
    if grew and last["connections"] > grew[-1]["connections"] * 1.01:
        for (i, shard), (n, t) in sorted(changed.items()):
            if t <= last["t"] - 15:
                print(f"  server {i} shard {shard}: count stuck at {n} since t={t:.0f}s while the total grew")


def cmd_busy(out):
    """Servers that still count connections (after every client has gone): index pid count."""
    snap = json.load(open(os.path.join(out, "metrics-end.json")))
    pids = {i: pid for i, pid, _ in servers(out)}
    for s in snap["servers"]:
        if s.get("connections"):
            print(s["i"], pids[s["i"]], s["connections"], json.dumps(s["shards"]).replace(" ", ""))


def ticks(pid):
    try:
        s = open(f"/proc/{pid}/stat").read()
        w = s[s.rindex(")") + 2:].split()
        return int(w[11]) + int(w[12])
    except (OSError, ValueError, IndexError):
        return None


def cmd_cpu(out, seconds):
    srv = [pid for _, pid, _ in servers(out)]
    bench = [int(l.split()[1]) for l in open(os.path.join(out, "benches.tsv"))]
    pool = cf.ThreadPoolExecutor(16)
    c0 = sum(r["conns"] for r in scrape_all(out, pool))
    a = {p: ticks(p) for p in srv + bench}
    t0 = time.time()
    time.sleep(seconds)
    b = {p: ticks(p) for p in srv + bench}
    span = time.time() - t0
    c1 = sum(r["conns"] for r in scrape_all(out, pool))

    def pct(pids):
        d = [(b[p] - a[p]) for p in pids if a.get(p) is not None and b.get(p) is not None]
        return (100.0 * sum(d) / TCK / span, [100.0 * x / TCK / span for x in d])

    st, sp = pct(srv)
    bt, _ = pct(bench)
    res = {"window_secs": round(span, 2), "connections_start": c0, "connections_end": c1,
           "server_pct_of_one_core": round(st, 2), "server_pct_per_process_mean": round(st / max(1, len(sp)), 3),
           "server_pct_per_process_max": round(max(sp or [0]), 3), "bench_pct_of_one_core": round(bt, 2)}
    json.dump(res, open(os.path.join(out, "cpu.json"), "w"), indent=1)
    print(f"CPU over {span:.1f}s of the hold ({c0} -> {c1} connections): servers {st:.2f}% of one core "
          f"(all {len(sp)} processes), bench {bt:.2f}%")


def merge(into, d):
    for k, v in (d or {}).items():
        into[k] = into.get(k, 0) + v


def fmt_b(x):
    if x is None:
        return "n/a"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(x) >= div:
            return f"{x / div:.2f} {unit}"
    return f"{x:.0f} B"


def ms(us):
    return "n/a" if us is None else f"{us / 1000:.1f} ms"


def counts(d):
    d = {k: int(v) for k, v in (d or {}).items() if v}
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def cmd_summary(out):
    cfg = json.load(open(os.path.join(out, "config.json")))
    n = cfg["connections"]
    # Bench reports.
    starts, reports, missing = {}, [], []
    for line in open(os.path.join(out, "benches.tsv")):
        k, pid, start, rc = (line.split() + ["?"])[:4]
        starts[int(k)] = float(start)
    for k in sorted(starts):
        path = os.path.join(out, f"bench-{k}.json")
        try:
            text = open(path).read().strip().splitlines()
            reports.append((k, json.loads(text[-1])))
        except (OSError, ValueError, IndexError):
            missing.append(k)
    t0 = min(starts.values()) if starts else 0
    est = sum(r["established"] for _, r in reports)
    failures, dropped, close_fail, proto = {}, {}, {}, {}
    for _, r in reports:
        merge(failures, r.get("failures"))
        merge(dropped, r.get("dropped"))
        merge(close_fail, r.get("close_failures"))
        merge(proto, r.get("protocol_errors"))
    aborted = sum(r.get("aborted", 0) for _, r in reports)
    ends = [starts[k] - t0 + r["ramp_secs"] for k, r in reports if r.get("ramp_secs")]
    ramp = max(ends) if ends else None
    reached = est >= n and not missing
    p99s = [r["handshake_latency"]["p99_us"] for _, r in reports if r.get("handshake_latency")]
    p50s = [r["handshake_latency"]["p50_us"] for _, r in reports if r.get("handshake_latency")]
    open_end = sum(r.get("open_at_end_of_hold", 0) for _, r in reports)
    held = min((r.get("held_secs", 0) for _, r in reports), default=0)
    b_ready = sum((r["memory"].get("bench_rss_ready") or 0) for _, r in reports)
    b_after = sum((r["memory"].get("bench_rss_after") or 0) for _, r in reports)
    b_conns = sum(r["memory"].get("connections") or 0 for _, r in reports)
    bench_per_conn = (b_after - b_ready) / b_conns if b_conns else None

    # Samples: baseline = the first row (taken before any bench started); the held point
    # = the last sample at the highest connection count.
    det = [json.loads(l) for l in open(os.path.join(out, "samples-detail.jsonl")) if l.strip()]
    base = det[0]
    peak_conns = max(d["connections"] for d in det)
    at_peak = [d for d in det if d["connections"] == peak_conns]
    peak, first_peak = at_peak[-1], at_peak[0]
    c = peak["connections"]
    per_proc = []
    base_by = {s["i"]: s for s in base["servers"]}
    for s in peak["servers"]:
        b = base_by.get(s["i"])
        if s["conns"] and b and s["rss"] and b["rss"]:
            per_proc.append(((s["rss"] - b["rss"]) / s["conns"], s["conns"], b["rss"]))
    rss_delta = peak["server_rss"] - base["server_rss"]
    kern_delta = peak["kernel_bytes"] - base["kernel_bytes"]
    by_cache = {}
    for name, cache in peak["slabs"].items():
        old = base["slabs"].get(name)
        if old and c:
            by_cache[name] = round((cache["active"] - old["active"]) * cache["objsize"] / c, 1)
    tcp_mem = (peak["sockstat"].get("mem", 0) - base["sockstat"].get("mem", 0)) * PAGE / c if c else None
    shard_conns = [v for d in peak["servers"] for v in d.get("shards", {}).values()]
    proc_conns = [s["conns"] for s in peak["servers"]]

    def snap(name):
        try:
            return json.load(open(os.path.join(out, f"metrics-{name}.json")))
        except (OSError, ValueError):
            return None

    m_end, m_hold = snap("end"), snap("hold")

    def tot(m, name):
        return int(sum((m or {}).get("totals", {}).get(name, {}).values())) if m else None

    def bylabel(m, name):
        return {k or "all": v for k, v in (m or {}).get("totals", {}).get(name, {}).items()} if m else {}

    upgrades = tot(m_end, "wsgate_upgrades_total")
    # Idle connections: every frame the servers sent before the benches closed was a
    # ping. Received frames are counted when a connection ends, so the pongs show in the
    # last snapshot (minus the close frames).
    pongs = None
    if m_end and upgrades:
        pongs = (tot(m_end, "wsgate_frames_received_total") - tot(m_end, "wsgate_close_frames_received_total")) / upgrades
    try:
        phases = json.load(open(os.path.join(out, "phases.json")))
    except (OSError, ValueError):
        phases = {}
    # The hold ends, for this purpose, at the last sample still at the held level (the
    # count measured with the CPU, else the peak): the first bench to finish its hold
    # starts closing there.
    try:
        level = json.load(open(os.path.join(out, "cpu.json")))["connections_start"] or peak_conns
    except (OSError, ValueError, KeyError):
        level = peak_conns
    held_row = [d for d in det if d["connections"] >= level * 0.999][-1]
    hb_hold = held_row.get("heartbeat_timeouts")
    sent = [s.get("frames_sent") for s in held_row["servers"]]
    pings = sum(sent) / held_row["connections"] if held_row["connections"] and None not in sent else None
    try:
        stuck = [l.split() for l in open(os.path.join(out, "stuck-servers.txt")) if l.strip()]
    except OSError:
        stuck = []
    # When each stuck shard's count last changed, in seconds after the first bench
    # started (samples up to the last snapshot, before the servers were stopped).
    end_epoch = (m_end or {}).get("epoch", float("inf"))
    frozen = {}
    for d in det:
        if d["epoch"] > end_epoch:
            break
        for srv in d["servers"]:
            for shard, v in srv.get("shards", {}).items():
                key = (srv["i"], shard)
                if frozen.get(key, (None,))[0] != v:
                    frozen[key] = (v, round(d["epoch"] - phases.get("bench_start", det[0]["epoch"])))
    try:
        cpu = json.load(open(os.path.join(out, "cpu.json")))
    except (OSError, ValueError):
        cpu = None
    s = {
        "mode": cfg["mode"], "mode_reason": cfg["why"], "servers": cfg["servers"], "shards_per_server": cfg["shards"],
        "server_max_connections_each": cfg["server_max"], "bench_processes": cfg["benches"],
        "connections_requested": n, "hold": cfg["hold"], "rate_target_per_sec": cfg["rate"],
        "ping_interval": cfg["ping_interval"], "idle_timeout": cfg["idle_timeout"],
        "established": est, "reached_n": reached, "bench_reports_missing": missing,
        "open_at_end_of_hold": open_end, "held_secs_min": held,
        "connections_held_server_side": c,
        "failures": failures, "aborted": aborted, "dropped_during_run": dropped, "close_failures": close_fail,
        "protocol_errors": proto,
        "time_to_reach_n_secs": round(ramp, 2) if reached and ramp else None,
        "ramp_secs": round(ramp, 2) if ramp else None,
        "handshakes_per_sec": round(est / ramp, 1) if ramp else None,
        "handshake_latency_p99_us_worst_bench": max(p99s) if p99s else None,
        "handshake_latency_p50_us_median_bench": sorted(p50s)[len(p50s) // 2] if p50s else None,
        "server_rss_baseline_bytes": base["server_rss"], "server_rss_held_bytes": peak["server_rss"],
        "server_rss_per_connection": round(rss_delta / c, 1) if c else None,
        "server_rss_per_connection_when_n_first_counted": round((first_peak["server_rss"] - base["server_rss"]) / c, 1) if c else None,
        "server_rss_per_connection_per_process_min": round(min(p[0] for p in per_proc), 1) if per_proc else None,
        "server_rss_per_connection_per_process_max": round(max(p[0] for p in per_proc), 1) if per_proc else None,
        "server_rss_baseline_per_process_bytes": round(sum(p[2] for p in per_proc) / len(per_proc)) if per_proc else None,
        "server_rss_all_in_per_connection": round(peak["server_rss"] / c, 1) if c else None,
        "kernel_bytes_baseline": base["kernel_bytes"], "kernel_bytes_held": peak["kernel_bytes"],
        "kernel_bytes_per_connection_both_ends": round(kern_delta / c, 1) if c else None,
        "kernel_bytes_per_server_connection": round(kern_delta / c / 2, 1) if c else None,
        "kernel_bytes_per_connection_by_cache_both_ends": by_cache,
        "tcp_buffer_bytes_per_connection_both_ends": round(tcp_mem, 1) if tcp_mem is not None else None,
        "bench_rss_per_connection": round(bench_per_conn, 1) if bench_per_conn is not None else None,
        "connections_per_process_min_max": [min(proc_conns), max(proc_conns)] if proc_conns else None,
        "connections_per_shard_min_max": [min(shard_conns), max(shard_conns)] if shard_conns else None,
        "cpu_idle": cpu,
        "heartbeat_timeouts": tot(m_end, "wsgate_heartbeat_timeouts_total"),
        "heartbeat_timeouts_by_end_of_hold": hb_hold,
        "end_of_hold_secs_after_bench_start": round(held_row["epoch"] - phases.get("bench_start", det[0]["epoch"]), 1),
        "servers_stuck_at_end": [{"server": int(x[0]), "pid": int(x[1]), "connections": int(x[2]), "shards": x[3],
                                  "count_unchanged_since_secs_after_bench_start": {sh: frozen.get((int(x[0]), sh), (0, None))[1]
                                                                                   for sh, n in json.loads(x[3]).items() if n}}
                                 for x in stuck],
        "pings_sent_per_connection_by_end_of_hold": round(pings, 2) if pings is not None else None,
        "pongs_received_per_connection": round(pongs, 2) if pongs is not None else None,
        "server_upgrades": upgrades,
        "server_handshake_failures": bylabel(m_end, "wsgate_handshake_failures_total"),
        "server_handshake_timeouts": tot(m_end, "wsgate_handshake_timeouts_total"),
        "server_abnormal_closes": tot(m_end, "wsgate_abnormal_closes_total"),
        "server_close_frames_received": tot(m_end, "wsgate_close_frames_received_total"),
        "host_at_peak": {k: peak.get(k) for k in ("sockstat", "netstat", "conntrack_count", "conntrack_max", "files_open", "meminfo", "loadavg", "cpu_pressure_some_avg10")},
        "host_at_start": {k: base[k] for k in ("netstat", "meminfo")},
        "listen_overflows_during_run": peak["netstat"].get("ListenOverflows", 0) - base["netstat"].get("ListenOverflows", 0),
        "listen_drops_during_run": peak["netstat"].get("ListenDrops", 0) - base["netstat"].get("ListenDrops", 0),
    }
    json.dump(s, open(os.path.join(out, "summary.json"), "w"), indent=1)

    rows = [
        ("mode", f"{s['mode']}: {s['servers']} server process(es) x {s['shards_per_server']} shards, {s['bench_processes']} bench process(es)"),
        ("  why", s["mode_reason"]),
        ("connections held", f"{est} established of {n} ({'all' if reached else 'NOT all'}); servers counted {c} at the held sample; {open_end} open at the end of the hold"),
        ("failures (bench)", f"{counts(failures)}; aborted {aborted}; dropped during run: {counts(dropped)}"),
        ("failures (server)", f"handshake {counts(s['server_handshake_failures'])}; handshake timeouts {s['server_handshake_timeouts']}"),
        ("time to reach N", f"{s['time_to_reach_n_secs']} s" if s["time_to_reach_n_secs"] else f"not reached (ramp {s['ramp_secs']} s)"),
        ("handshakes/s", f"{s['handshakes_per_sec']} (target {cfg['rate']}); handshake latency p99 {ms(s['handshake_latency_p99_us_worst_bench'])} (worst bench), p50 {ms(s['handshake_latency_p50_us_median_bench'])} (median bench)"),
        ("server RSS / connection", f"{s['server_rss_per_connection']} B at the end of the hold ({s['server_rss_per_connection_when_n_first_counted']} B when the count first peaked); all processes {fmt_b(s['server_rss_baseline_bytes'])} -> {fmt_b(s['server_rss_held_bytes'])}"),
        ("  per process", f"{s['server_rss_per_connection_per_process_min']} .. {s['server_rss_per_connection_per_process_max']} B; fixed cost {fmt_b(s['server_rss_baseline_per_process_bytes'])} per process; all-in {s['server_rss_all_in_per_connection']} B per connection"),
        ("kernel / connection", f"{s['kernel_bytes_per_server_connection']} B per server socket (host-wide {s['kernel_bytes_per_connection_both_ends']} B per connection, halved: loopback holds both ends)"),
        ("  by cache (both ends)", ", ".join(f"{k} {v}" for k, v in by_cache.items()) + f", tcp buffers {s['tcp_buffer_bytes_per_connection_both_ends']}"),
        ("bench RSS / connection", f"{s['bench_rss_per_connection']} B"),
        ("CPU at idle (hold)", f"servers {cpu['server_pct_of_one_core']}% of one core over {cpu['window_secs']} s ({cpu['server_pct_per_process_mean']}% per process), bench {cpu['bench_pct_of_one_core']}%" if cpu else "not measured"),
        ("heartbeat", f"timeouts {s['heartbeat_timeouts_by_end_of_hold']} by the end of the hold (t={s['end_of_hold_secs_after_bench_start']}s), {s['heartbeat_timeouts']} in all (close phase included); pings sent per connection by then {s['pings_sent_per_connection_by_end_of_hold']}, pongs received per connection {s['pongs_received_per_connection']} (ping {cfg['ping_interval']}, idle {cfg['idle_timeout']})"),
        ("spread", f"connections per process {s['connections_per_process_min_max']}, per shard {s['connections_per_shard_min_max']}"),
        ("close", f"server saw {s['server_close_frames_received']} close frames; bench close failures {counts(close_fail)}; abnormal closes {s['server_abnormal_closes']}"),
        ("stuck shards", "; ".join(f"server {x['server']} shard " + ",".join(f"{sh} (count frozen since t={t}s)" for sh, t in x["count_unchanged_since_secs_after_bench_start"].items()) + f": {x['connections']} connections never released" for x in s["servers_stuck_at_end"]) + (" (threads in stuck-server-N.txt)" if s["servers_stuck_at_end"] else "") or "none"),
        ("host", f"cpu pressure {peak.get('cpu_pressure_some_avg10')}% (some, avg10); listen overflows {s['listen_overflows_during_run']}, drops {s['listen_drops_during_run']}; conntrack {peak['conntrack_count']}/{peak['conntrack_max']}; files open {peak['files_open']}; MemAvailable {fmt_b(base['meminfo'].get('MemAvailable'))} -> {fmt_b(peak['meminfo'].get('MemAvailable'))}"),
    ]
    w = max(len(r[0]) for r in rows)
    print("\nwsgate density summary")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    print(f"\n(summary.json, samples.csv, density.svg in {out})")


if __name__ == "__main__":
    cmd, out = sys.argv[1], sys.argv[2]
    if cmd == "sample":
        cmd_sample(out, float(sys.argv[3]), time.time() + float(sys.argv[4]))
    elif cmd == "scrape":
        cmd_scrape(out, sys.argv[3])
    elif cmd == "cpu":
        cmd_cpu(out, float(sys.argv[3]))
    elif cmd == "why":
        cmd_why(out)
    elif cmd == "busy":
        cmd_busy(out)
    elif cmd == "summary":
        cmd_summary(out)
PY

# ---------------------------------------------------------------------------------------
# Servers.
# ---------------------------------------------------------------------------------------
: > "$out/servers.tsv"
: > "$out/benches.tsv"
rm -f "$out/.stop" "$out/latest" "$out"/bench-*.json "$out"/metrics-*.json "$out/cpu.json"
auth=(--auth-mode none)
if [ "$users" = 1 ]; then
  # A throw-away HMAC secret for this run only.
  head -c 32 /dev/urandom | base64 > "$out/secret"
  auth=(--auth-mode jwt --auth-hmac-secret-file "$out/secret")
fi
say "starting $servers server process(es)"
for ((i = 0; i < servers; i++)); do
  # Each process has its own (fresh) disk store: a data directory is locked by one process.
  rm -rf "$out/data-$i"
  "$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$(( admin_base + i ))" \
    --data-dir "$out/data-$i" --shards "$shards" --max-connections "$server_max" "${auth[@]}" \
    --upgrade-rate-per-ip 0 --message-rate 0 \
    --handshake-timeout 30s --max-handshakes-per-shard 8192 \
    --ping-interval "$ping_interval" --idle-timeout "$idle_timeout" \
    --drain-window 1s --drain-timeout 5s > "$out/server-$i.log" 2>&1 &
  server_pids+=($!)
  echo "$i $! $(( admin_base + i ))" >> "$out/servers.tsv"
done
ready_until=$(( SECONDS + 60 ))
for ((i = 0; i < servers; i++)); do
  until curl -sf --noproxy '*' -m 2 -o /dev/null "http://127.0.0.1:$(( admin_base + i ))/readyz"; do
    ours "${server_pids[$i]}" || { echo "server $i exited at start:" >&2; tail -5 "$out/server-$i.log" >&2; exit 1; }
    [ $SECONDS -lt $ready_until ] || { echo "server $i not ready within 60s" >&2; exit 1; }
    sleep 0.2
  done
done
# Every listener on the port must be ours.
listeners=$(ss -Hltnp "sport = :$port" | wc -l)
foreign=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | grep -vxF -f <(printf '%s\n' "${server_pids[@]}") || true)
[ -z "$foreign" ] || { echo "processes we did not start listen on port $port: $foreign" >&2; exit 1; }
say "servers ready: $listeners listeners on 127.0.0.1:$port, admin ports $admin_base..$(( admin_base + servers - 1 ))"

cat > "$out/config.json" <<EOF
{"mode": "$mode", "why": "$why", "connections": $connections, "hold": "$hold", "rate": $rate,
 "servers": $servers, "shards": $shards, "server_max": $server_max, "benches": $benches,
 "per_bench": $per_bench, "ips_per_bench": $ips_per_bench, "ping_interval": "$ping_interval",
 "idle_timeout": "$idle_timeout", "hard_nofile": "$hard", "cpus": $cpus, "port": $port,
 "connect_timeout_secs": $connect_timeout, "close_timeout_secs": $close_timeout,
 "users": $users}
EOF

# ---------------------------------------------------------------------------------------
# Sampler, then the benches.
# ---------------------------------------------------------------------------------------
ramp_limit=$(( connections / rate + connect_timeout + 10 ))
bench_hard=$(( ramp_limit + hold_s + close_timeout + 15 + 5 ))
python3 "$helper" sample "$out" 2 $(( bench_hard + 120 )) > "$out/sampler.log" 2>&1 &
sampler_pid=$!
until [ -s "$out/latest" ]; do
  ours "$sampler_pid" || { echo "the sampler exited:" >&2; cat "$out/sampler.log" >&2; exit 1; }
  sleep 0.2
done
say "sampling every 2s into $out/samples.csv (baseline taken)"

say "starting $benches bench process(es): $per_bench connections each at most, $ips_per_bench source addresses each, rate $rate/s in all"
left=$connections
for ((k = 0; k < benches; k++)); do
  n_k=$(( left < per_bench ? left : per_bench )); left=$(( left - n_k ))
  r_k=$(( (rate * n_k + connections - 1) / connections )); [ "$r_k" -ge 1 ] || r_k=1
  a=$(( 10 + k / 256 )); b=$(( k % 256 ))
  args=(bench density --json --connections "$n_k" --hold "${hold_s}s" --rate "$r_k"
        --url "ws://127.0.0.1:$port/ws" --source-ips "127.$a.$b.1-127.$a.$b.$ips_per_bench"
        --connect-timeout "${connect_timeout}s" --close-timeout "${close_timeout}s")
  [ -n "$bench_workers" ] && args+=(--workers "$bench_workers")
  [ "$users" = 1 ] && args+=(--user-prefix "b$k-" --token-secret-file "$out/secret")
  start=$(now)
  "$bin" "${args[@]}" > "$out/bench-$k.json" 2> "$out/bench-$k.err" &
  bench_pids+=($!)
  echo "$k $! $start" >> "$out/benches.tsv"
done
bench_t0=$(awk 'NR == 1 { print $3 }' "$out/benches.tsv")

alive_benches() { local pid n=0; for pid in "${bench_pids[@]}"; do ours "$pid" && n=$((n + 1)); done; echo $n; }

# Ramp: until the servers count N, the ramp limit passes, or the count stalls.
reached=0; last_c=-1; last_change=$SECONDS; last_log=0
while :; do
  read -r t c ok total < "$out/latest" || true
  c=${c:-0}
  if [ "$c" != "$last_c" ]; then last_c=$c; last_change=$SECONDS; fi
  if [ $(( SECONDS - last_log )) -ge 10 ]; then
    say "ramp: $c connections (${ok:-?}/${total:-?} servers scraped), $(since "$bench_t0")s, $(alive_benches) benches running, load $(cut -d' ' -f1 /proc/loadavg)"
    last_log=$SECONDS
  fi
  if [ "$c" -ge "$connections" ]; then reached=1; break; fi
  if [ "$(since "$bench_t0")" -ge "$ramp_limit" ]; then say "ramp limit (${ramp_limit}s) passed at $c connections"; break; fi
  if [ "$c" -gt 0 ] && [ $(( SECONDS - last_change )) -ge 20 ]; then say "ramp stalled at $c connections for 20s"; break; fi
  [ "$(alive_benches)" -gt 0 ] || { say "every bench exited during the ramp"; break; }
  sleep 1
done
if [ "$reached" = 1 ]; then
  hold_start=$(now)
  say "reached $connections connections in $(since "$bench_t0")s (servers' count); holding ${hold_s}s"
else
  # The benches hold from the end of their ramp limit.
  hold_start=$(awk -v a="$bench_t0" -v r="$ramp_limit" 'BEGIN { printf "%.3f", a + r }')
  say "not reached: $c of $connections; the benches hold from their ramp limit. Where the ramp stood:"
  python3 "$helper" why "$out" || true
  while [ "$(since "$hold_start")" -lt 0 ] && [ "$(alive_benches)" -gt 0 ]; do sleep 1; done
fi

hold_end=$(awk -v a="$hold_start" -v h="$hold_s" 'BEGIN { printf "%.3f", a + h }')
echo "{\"bench_start\": $bench_t0, \"reached\": $reached, \"hold_start\": $hold_start, \"hold_end\": $hold_end}" > "$out/phases.json"

# CPU at idle: 10 s of the hold, starting 2 s in.
if [ "$hold_s" -ge 14 ]; then
  sleep 2
  python3 "$helper" cpu "$out" 10 || say "CPU measurement failed"
else
  say "hold shorter than 14s: CPU at idle not measured"
fi
# The servers' counters while every connection is held (the benches whose ramp ended
# first start closing before the last one's hold ends, so not later than this).
python3 "$helper" scrape "$out" hold || true

# ---------------------------------------------------------------------------------------
# Wait for the benches (they close and report), bounded by their own hard deadline.
# ---------------------------------------------------------------------------------------
deadline=$(( SECONDS + bench_hard + 30 - $(since "$bench_t0") ))
say "waiting for the benches to close and report (at most $(( deadline - SECONDS ))s)"
while [ "$(alive_benches)" -gt 0 ] && [ $SECONDS -lt $deadline ]; do sleep 1; done
[ "$(alive_benches)" -gt 0 ] && { say "benches still running past their deadline: stopping them"; stop_pids 10 "${bench_pids[@]}"; }
failed_benches=0
for ((k = 0; k < benches; k++)); do
  rc=0; wait "${bench_pids[$k]}" 2>/dev/null || rc=$?
  sed -i "$(( k + 1 ))s/\$/ $rc/" "$out/benches.tsv"
  if [ "$rc" != 0 ]; then
    failed_benches=$(( failed_benches + 1 ))
    [ -s "$out/bench-$k.err" ] && say "bench $k exited $rc: $(tail -c 300 "$out/bench-$k.err" | tr '\n' ' ')"
  fi
done
[ "$failed_benches" = 0 ] || say "$failed_benches of $benches bench processes exited non-zero (1: not every connection established and held; see the summary)"
bench_pids=()
# Every client socket is closed now; the servers should count none within a few seconds.
settle=$(( SECONDS + 15 ))
while [ $SECONDS -lt $settle ]; do
  read -r t c ok total < "$out/latest" || true
  [ "${c:-1}" = 0 ] && break
  sleep 1
done
python3 "$helper" scrape "$out" end || true
busy=$(python3 "$helper" busy "$out" 2> /dev/null || true)
if [ -n "$busy" ]; then
  say "servers still counting connections after every bench exited (a shard not running?):"
  echo "$busy" | sed 's/^/  server /'
  while read -r i pid n shards; do
    ours "$pid" || continue
    f="$out/stuck-server-$i.txt"
    say "  capturing the threads of server $i (pid $pid) in $f"
    {
      echo "server $i pid $pid: $n connections, per shard $shards"
      for t in /proc/"$pid"/task/*; do
        echo "--- thread ${t##*/} $(cat "$t/comm") state $(awk '{ sub(/^.*\) /, ""); print $1 }' "$t/stat") wchan $(cat "$t/wchan") syscall $(cut -d' ' -f1 "$t/syscall")"
        cat "$t/stack" 2> /dev/null
      done
      command -v gdb > /dev/null && timeout 60 gdb -p "$pid" -batch -ex 'thread apply all bt' 2>&1 | grep -v '^\[New LWP\|^warning:'
    } > "$f" 2>&1 || true
  done <<< "$busy"
  printf '%s\n' "$busy" > "$out/stuck-servers.txt"
fi
touch "$out/.stop"; stop_pids 10 "$sampler_pid"; sampler_pid=""
say "stopping the servers"
stop_pids 20 "${server_pids[@]}"; server_pids=()

# ---------------------------------------------------------------------------------------
# Report and plot.
# ---------------------------------------------------------------------------------------
python3 "$helper" summary "$out"
title="wsgate: memory per idle connection ($mode mode, $servers server process(es), $(awk -F, 'NR > 1 && $2 > m { m = $2 } END { print m + 0 }' "$out/samples.csv") connections)"
python3 "$here/scripts/plot_density.py" "$out/samples.csv" "$out/density.svg" "$title" && say "plot: $out/density.svg"
if command -v rsvg-convert > /dev/null; then
  rsvg-convert -o "$out/density.png" "$out/density.svg" && say "plot: $out/density.png"
elif command -v convert > /dev/null && convert -version 2>/dev/null | grep -q ImageMagick; then
  convert "$out/density.svg" "$out/density.png" && say "plot: $out/density.png"
else
  say "no rsvg-convert or ImageMagick: SVG only (apt-get install -y librsvg2-bin)"
fi
