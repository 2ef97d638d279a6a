#!/usr/bin/env bash
# The Autobahn WebSocket conformance suite (wstest -m fuzzingclient, autobahntestsuite
# 0.8.2) against a release wsgate in echo mode with permessage-deflate on.
#
#   scripts/autobahn.sh [--limits raised|default] [--timeout SECONDS] [--out DIR] [CASE ...]
#
#   --limits raised   (the default) message, frame and send-queue limits raised to 64MiB
#                     and the per-connection message rate off, so every case fits
#                     (Autobahn's largest messages are 16MiB, and 9.7/9.8/12.x/13.x send
#                     1000 messages back to back).
#   --limits default  only --echo and --compression on (plus auth off, loopback ports,
#                     the memory store): cases beyond a documented limit fail.
#   --timeout N       bound on the whole fuzzingclient run [default: 2400]
#   --out DIR         report folder, emptied first [default: /tmp/autobahn-reports/<limits>]
#   CASE ...          Autobahn case patterns ("1.*", "9.1.6", "12.*") [default: "*"]
#
# autobahntestsuite is Python 2 only. The script installs, into /opt/autobahn and only
# when missing, a Python 2.7 virtualenv with wstest and pinned Python 2 dependencies.
# Its interpreter is the first of: $AUTOBAHN_PYTHON2, pyenv's 2.7.x, a python2.7 on
# PATH, or else Debian bullseye's python2.7 packages (the last Debian suite that has
# them) fetched with a private apt configuration and unpacked into /opt/autobahn/py27,
# without touching the system's apt sources or installed packages. Set
# AUTOBAHN_PYTHON2=debian to force that last way, AUTOBAHN_PREFIX to install elsewhere.
#
# Reports go to the --out folder: index.html to look at, index.json, one JSON per case
# with the wire log, wsgate.log and wstest.log. Prints the behaviour counts per case
# section and every case that is not OK, NON-STRICT or INFORMATIONAL; exits non-zero if
# any case FAILED (its behaviour, or its closing behaviour FAILED or UNCLEAN). Stops
# only the server it started, by PID.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
limits=raised
run_timeout=2400
reports=
cases=()
while [ $# -gt 0 ]; do
  case $1 in
    --limits) limits=$2; shift 2 ;;
    --timeout) run_timeout=$2; shift 2 ;;
    --out) reports=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; exit 2 ;;
    *) cases+=("$1"); shift ;;
  esac
done
case $limits in
  raised|default) ;;
  *) echo "--limits is raised or default, not '$limits'" >&2; exit 2 ;;
esac
[ ${#cases[@]} -gt 0 ] || cases=("*")

prefix=${AUTOBAHN_PREFIX:-/opt/autobahn}  # where the tools go
venv=$prefix/venv
py27=$prefix/py27              # Debian's python2.7, unpacked (only if needed)
reports=${reports:-/tmp/autobahn-reports/$limits}
work=$(mktemp -d /tmp/autobahn.XXXXXX)

# --- Python 2.7 --------------------------------------------------------------------

py2_works() { # PATH: a python2.7 that runs and has ssl and zlib
  [ -x "$1" ] && "$1" -c 'import sys, ssl, zlib; assert sys.version_info[:2] == (2, 7)' \
    >/dev/null 2>&1
}

# Debian bullseye's python2.7, unpacked into $py27. A private apt configuration (its
# own sources list, lists and cache under $py27/apt, an empty dpkg status) so that
# neither /etc/apt nor the installed packages change: `apt-get download` only fetches
# the .debs, `dpkg-deb -x` unpacks them. libssl1.1 and libffi7 are not in bookworm and
# come from bullseye as well; everything else python2.7 links against is in bookworm.
install_debian_python2() {
  if py2_works "$py27/python2.7"; then return 0; fi
  echo "== installing Debian bullseye's python2.7 into $py27" >&2
  local apt=$py27/apt
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$py27/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-bullseye-automatic.gpg]" \
    "http://deb.debian.org/debian bullseye main" >"$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
              -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root")
  [ -f /usr/share/keyrings/debian-archive-bullseye-automatic.gpg ] \
    || apt-get install -y -q debian-archive-keyring >&2
  timeout 600 apt-get "${opts[@]}" -q update >&2
  (cd "$apt/debs" && timeout 600 apt-get "${opts[@]}" -q download \
    python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib \
    libpython2.7 libpython2.7-dev libssl1.1 libffi7 >&2)
  local deb
  for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$py27/root"; done
  # The interpreter finds its standard library from PYTHONHOME, and _ssl/_ctypes find
  # libssl1.1/libffi7 from LD_LIBRARY_PATH; the virtualenv records the library paths,
  # so only LD_LIBRARY_PATH is needed later (see venv_env).
  cat >"$py27/python2.7" <<EOF
#!/bin/sh
LD_LIBRARY_PATH=$py27/root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} \\
PYTHONHOME=$py27/root/usr exec $py27/root/usr/bin/python2.7 "\$@"
EOF
  chmod +x "$py27/python2.7"
  py2_works "$py27/python2.7" || { echo "Debian's python2.7 does not run" >&2; return 1; }
}

find_python2() { # prints the path of a working python2.7, installing one if needed
  local p
  if [ "${AUTOBAHN_PYTHON2:-}" = debian ]; then
    install_debian_python2 && echo "$py27/python2.7"; return
  fi
  for p in "${AUTOBAHN_PYTHON2:-}" "$py27/python2.7" \
           "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/2.7*/bin/python2.7 \
           "$(command -v python2.7 || true)"; do
    # (pyenv's shim on PATH exists even when 2.7 is not selected: py2_works runs it)
    if [ -n "$p" ] && py2_works "$p"; then echo "$p"; return 0; fi
  done
  install_debian_python2 && echo "$py27/python2.7"
}

# --- the virtualenv with wstest ----------------------------------------------------

# Every package pinned to its last release that runs on Python 2.7 (found by trial):
# pip would otherwise pick versions that no longer install or import on 2.7.
write_constraints() {
  cat >"$1" <<'EOF'
autobahntestsuite==0.8.2
autobahn==0.10.9
txaio==2.1.0
Twisted==20.3.0
zope.interface==5.5.2
Automat==22.10.0
constantly==15.1.0
incremental==22.10.0
hyperlink==21.0.0
PyHamcrest==1.10.1
attrs==21.4.0
idna==2.10
typing==3.10.0.0
six==1.16.0
pyOpenSSL==20.0.1
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
enum34==1.1.10
ipaddress==1.0.23
service-identity==18.1.0
pyasn1==0.4.8
pyasn1-modules==0.2.8
klein==20.6.0
Tubes==0.2.1
Werkzeug==1.0.1
Jinja2==2.11.3
MarkupSafe==1.1.1
unittest2==1.1.0
argparse==1.4.0
linecache2==1.0.0
traceback2==1.4.0
wsaccel==0.6.2
ujson==1.35
EOF
}

venv_env() { # the environment wstest and pip need with Debian's interpreter
  if grep -q "$py27/root" "$venv/pyvenv.cfg" 2>/dev/null; then
    export LD_LIBRARY_PATH=$py27/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # Debian's distutils looks for Python.h in /usr/include/python2.7 and adds no -O2:
    # point it at the unpacked headers, and optimise (ujson 1.35 relies on inlining).
    export CPPFLAGS="-I$py27/root/usr/include/python2.7 -I$py27/root/usr/include" CFLAGS=-O2
  fi
}

install_wstest() {
  if [ -x "$venv/bin/wstest" ] && (venv_env; "$venv/bin/python" -c \
      'import autobahntestsuite, wsaccel.utf8validator, OpenSSL' >/dev/null 2>&1); then
    return 0
  fi
  local python2
  python2=$(find_python2)
  echo "== creating $venv with $python2" >&2
  # virtualenv 20.21 is the last that creates Python 2.7 environments; it runs on the
  # machine's Python 3 from its own folder and seeds pip 20.3.4, the last pip for 2.7.
  mkdir -p "$prefix"
  if ! PYTHONPATH=$prefix/tools python3 -c 'import virtualenv' >/dev/null 2>&1; then
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
      --target "$prefix/tools" virtualenv==20.21.1 >&2
  fi
  rm -rf "$venv"
  PYTHONPATH=$prefix/tools python3 -m virtualenv -q -p "$python2" "$venv" >&2
  write_constraints "$prefix/constraints.txt"
  (venv_env; timeout 1200 "$venv/bin/pip" install -q --disable-pip-version-check \
    --no-python-version-warning \
    -c "$prefix/constraints.txt" autobahntestsuite==0.8.2 >&2)
}

# --- the server --------------------------------------------------------------------

free_port() { # a loopback TCP port nothing listens on now
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

server_pid=
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
  # SIGTERM drains (up to --drain-timeout); Autobahn has closed every connection.
  stop_pid "$server_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_wstest
venv_env

cargo build --release --quiet --manifest-path "$here/Cargo.toml"
wsgate=$here/target/release/wsgate
port=$(free_port)
admin_port=$(free_port)
while [ "$admin_port" = "$port" ]; do admin_port=$(free_port); done

# Not limits, but needed to run at all: no JWT (Autobahn sends none), loopback ports,
# the memory store (nothing written under the working directory).
args=(serve --echo --compression on --auth-mode none
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" --store memory)
if [ "$limits" = raised ]; then
  # 16MiB messages in 9.x and 1000-message bursts in 9.7/9.8/12.x/13.x.
  args+=(--max-message-bytes 64MiB --max-frame-bytes 64MiB --send-queue-bytes 64MiB
         --message-rate 0 --upgrade-rate-per-ip 0 --max-connections-per-user 0)
fi

# Empty the report folder, but only one that holds nothing or an earlier report.
if [ -d "$reports" ] && [ -n "$(ls -A "$reports")" ] \
   && [ ! -e "$reports/index.json" ] && [ ! -e "$reports/wstest.log" ]; then
  echo "$reports holds something else than an Autobahn report: not emptying it" >&2
  exit 2
fi
rm -rf "$reports"
mkdir -p "$reports"
echo "== wsgate ${args[*]}" >&2
"$wsgate" "${args[@]}" >"$reports/wsgate.log" 2>&1 &
server_pid=$!
wait_port "127.0.0.1:$port"

# The fuzzingclient spec: one server, the chosen cases.
python3 - "$work/spec.json" "$reports" "ws://127.0.0.1:$port/ws" "${cases[@]}" <<'EOF'
import json, sys
spec, outdir, url, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
json.dump({"outdir": outdir, "servers": [{"agent": "wsgate", "url": url}],
           "cases": cases, "exclude-cases": [], "exclude-agent-cases": {}},
          open(spec, "w"), indent=2)
EOF

echo "== wstest -m fuzzingclient, cases ${cases[*]}, up to ${run_timeout}s; log in $reports/wstest.log" >&2
rc=0
(cd "$work" && timeout "$run_timeout" "$venv/bin/wstest" -m fuzzingclient -s spec.json) \
  >"$reports/wstest.log" 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
  echo "wstest exited $rc (124: timed out after ${run_timeout}s); see $reports/wstest.log" >&2
  tail -n 5 "$reports/wstest.log" >&2
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "wsgate exited during the run; see $reports/wsgate.log" >&2
  rc=1
fi
[ -f "$reports/index.json" ] || { echo "no $reports/index.json" >&2; exit 1; }

# --- summary -----------------------------------------------------------------------
python3 - "$reports" <<'EOF' || rc=1
import json, os, sys
from collections import Counter, defaultdict
reports = sys.argv[1]
index = json.load(open(os.path.join(reports, "index.json")))
cases = index["wsgate"]
key = lambda c: [int(x) for x in c.split(".")]
order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
by_section = defaultdict(Counter)
total, closes = Counter(), Counter()
for cid, r in cases.items():
    by_section[cid.split(".")[0]][r["behavior"]] += 1
    total[r["behavior"]] += 1
    closes[r["behaviorClose"]] += 1
others = sorted(set(total) - set(order))
cols = order + others
print("%-8s" % "section" + "".join("%15s" % c for c in cols))
for s in sorted(by_section, key=int):
    print("%-8s" % s + "".join("%15d" % by_section[s][c] for c in cols))
print("%-8s" % "all" + "".join("%15d" % total[c] for c in cols))
print("closing behaviour: " + ", ".join("%s %d" % kv for kv in sorted(closes.items())))
bad = 0
for cid in sorted(cases, key=key):
    r = cases[cid]
    if r["behavior"] in ("OK", "NON-STRICT", "INFORMATIONAL") and r["behaviorClose"] in ("OK", "INFORMATIONAL"):
        continue
    d = json.load(open(os.path.join(reports, r["reportfile"])))
    print("%-8s %-13s close %-16s remote close %s %r: %s | %s" % (
        cid, r["behavior"], r["behaviorClose"], r["remoteCloseCode"],
        d.get("remoteCloseReason"), d.get("description", ""), d.get("resultClose", "")))
    if r["behavior"] == "FAILED" or r["behaviorClose"] in ("FAILED", "UNCLEAN"):
        bad += 1
print("%d cases, %d failed; report: %s" % (len(cases), bad, os.path.join(reports, "index.html")))
sys.exit(1 if bad else 0)
EOF
exit $rc
