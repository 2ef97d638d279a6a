# shellcheck shell=bash
# Helpers the scripts here share; sourced, not run: . "$here/scripts/lib.sh"

wait_port() { # HOST:PORT: wait (up to 10 s) until it accepts a connection
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

stop_pid() { # PID: SIGTERM (a gateway drains), up to 5 s, then SIGKILL; only that PID
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
