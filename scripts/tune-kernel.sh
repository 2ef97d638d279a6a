#!/usr/bin/env bash
# Checks, applies and reverts the kernel settings a dense wsgate host needs.
#
#   scripts/tune-kernel.sh check  [--connections N]   current vs recommended, and what N
#                                                     connections need; exit 1 if the host
#                                                     cannot hold N
#   scripts/tune-kernel.sh apply  [--connections N]   set the recommended values (root);
#                                                     saves the old ones the first time
#   scripts/tune-kernel.sh revert                     restore the saved values (root)
#
# The recommended values are those of sysctl/99-wsgate.conf (one source of truth; install
# that file in /etc/sysctl.d/ to keep them across reboots). With --connections N, limits
# that N needs more of (file descriptors, conntrack entries) are raised to fit N.
# The per-connection memory figures are measured ones (README, "Measured on this machine").
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
conf="$here/sysctl/99-wsgate.conf"
state_dir=${WSGATE_STATE_DIR:-/var/lib/wsgate}
saved="$state_dir/sysctl-saved.conf"

# Measured per idle upgraded connection (server side): kernel slab (TCP socket, inode,
# dentry, file, poll entry) and wsgate's own memory. Idle sockets hold no buffers.
kernel_bytes_per_conn=3700
user_bytes_per_conn=110
# Descriptors a wsgate process needs besides its connections (listeners, rings, admin).
fd_reserve=1024

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
connections=0
while [ $# -gt 0 ]; do
  case $1 in
    --connections) connections=${2:?--connections needs a number}; shift 2 ;;
    --connections=*) connections=${1#*=}; shift ;;
    *) usage ;;
  esac
done
case $connections in ''|*[!0-9]*) echo "--connections must be a whole number" >&2; exit 2 ;; esac

# key=value pairs from the conf file, comments and blanks dropped. A key with a leading
# "-" is optional (systemd-sysctl's syntax): kept only when the kernel has it.
recommended() {
  sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$conf" | sed -e 's/[[:space:]]*=[[:space:]]*/=/' -e 's/[[:space:]]\+/ /g' -e 's/ $//' |
    while IFS='=' read -r key value; do
      case $key in
        -*) key=${key#-}; [ -e "/proc/sys/$(echo "$key" | tr . /)" ] || continue ;;
      esac
      echo "$key=$value"
    done
}

current() { sysctl -n "$1" 2>/dev/null | tr '\t' ' ' | sed 's/  */ /g' || echo "n/a"; }

# The value to apply: the file's, raised where N connections need more.
target() {
  local key=$1 value=$2
  local need_fds=$((connections + fd_reserve))
  case $key in
    fs.nr_open) [ "$connections" -gt 0 ] && [ "$need_fds" -gt "$value" ] && value=$need_fds ;;
    fs.file-max) [ "$connections" -gt 0 ] && [ $((2 * need_fds)) -gt "$value" ] && value=$((2 * need_fds)) ;;
    net.netfilter.nf_conntrack_max) [ $((2 * connections)) -gt "$value" ] && value=$((2 * connections)) ;;
  esac
  echo "$value"
}

ge() { # ge "a b c" "x y z": every field of a >= the same field of b
  local -a a=($1) b=($2)
  [ ${#a[@]} -eq ${#b[@]} ] || return 1
  for i in "${!a[@]}"; do
    case ${a[$i]}${b[$i]} in *[!0-9]*) [ "${a[$i]}" = "${b[$i]}" ] || return 1; continue ;; esac
    [ "${a[$i]}" -ge "${b[$i]}" ] || return 1
  done
}

check() {
  local failed=0 key value want have
  printf '%-36s %-28s %-28s %s\n' setting current recommended ok
  while IFS='=' read -r key value; do
    want=$(target "$key" "$value")
    have=$(current "$key")
    if [ "$key" = net.ipv4.ip_local_port_range ] || [ "$key" = net.ipv4.tcp_rmem ] || [ "$key" = net.ipv4.tcp_wmem ] || [ "$key" = net.ipv4.tcp_tw_reuse ] || [ "$key" = net.ipv4.tcp_fin_timeout ]; then
      # Exact values: the port range and the small buffer defaults are the point, and
      # tcp_tw_reuse=2 (loopback only) is not "more" than 1, nor a longer fin_timeout.
      [ "$have" = "$want" ] && ok=yes || ok=differs
    elif ge "$have" "$want"; then ok=yes; else ok=LOW; fi
    printf '%-36s %-28s %-28s %s\n' "$key" "$have" "$want" "$ok"
  done < <(recommended)
  echo
  local nofile_hard nr_open mem_avail_kb need_fds need_mem
  nofile_hard=$(ulimit -Hn)
  nr_open=$(current fs.nr_open)
  mem_avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  echo "open files: this shell's hard limit is $nofile_hard; fs.nr_open is $nr_open"
  if [ "$connections" -gt 0 ]; then
    need_fds=$((connections + fd_reserve))
    need_mem=$((connections * (kernel_bytes_per_conn + user_bytes_per_conn)))
    echo "for $connections connections (server side, idle):"
    echo "  file descriptors: $need_fds in one process (LimitNOFILE in sysctl/wsgate.service, nofile in sysctl/limits.conf)"
    echo "  kernel memory:    ~$((connections * kernel_bytes_per_conn / 1048576)) MiB (~$kernel_bytes_per_conn B per socket)"
    echo "  wsgate memory:    ~$((connections * user_bytes_per_conn / 1048576)) MiB (~$user_bytes_per_conn B per connection)"
    echo "  a load generator on the same box needs as much again, and source ports: $(( (connections + 28000) / 28000 )) source addresses with the default port range"
    if [ "$nr_open" != n/a ] && [ "$nr_open" -lt "$need_fds" ]; then
      echo "CANNOT: fs.nr_open ($nr_open) is below $need_fds: run '$0 apply --connections $connections'"; failed=1
    fi
    if [ "$nofile_hard" != unlimited ] && [ "$nofile_hard" -lt "$need_fds" ]; then
      echo "CANNOT (one process): the hard open-files limit is $nofile_hard, below $need_fds: install sysctl/limits.conf or"
      echo "  set LimitNOFILE (sysctl/wsgate.service); where it cannot be raised, run several wsgate processes on the same"
      echo "  port (SO_REUSEPORT), each under the limit (scripts/bench-density.sh does)"; failed=1
    fi
    if [ $((need_mem / 1024)) -gt "$mem_avail_kb" ]; then
      echo "CANNOT: about $((need_mem / 1048576)) MiB needed, $((mem_avail_kb / 1024)) MiB available"; failed=1
    fi
  fi
  return $failed
}

apply() {
  [ "$(id -u)" = 0 ] || { echo "apply needs root" >&2; exit 1; }
  mkdir -p "$state_dir"
  if [ ! -e "$saved" ]; then
    while IFS='=' read -r key _; do echo "$key = $(current "$key")"; done < <(recommended) > "$saved"
    echo "saved the current values in $saved"
  fi
  local key value failed=0
  while IFS='=' read -r key value; do
    value=$(target "$key" "$value")
    if sysctl -q -w "$key=$value" >/dev/null 2>&1; then echo "set $key = $value"
    else echo "could not set $key (not permitted here?)" >&2; failed=1; fi
  done < <(recommended)
  echo "process limits are not sysctls: install sysctl/limits.conf (logins) or sysctl/wsgate.service (systemd)"
  return $failed
}

revert() {
  [ "$(id -u)" = 0 ] || { echo "revert needs root" >&2; exit 1; }
  [ -e "$saved" ] || { echo "nothing saved in $saved: nothing to revert"; return 0; }
  local key value
  while IFS='=' read -r key value; do
    key=$(echo "$key" | xargs); value=$(echo "$value" | xargs)
    [ "$value" = n/a ] && continue
    sysctl -q -w "$key=$value" && echo "restored $key = $value"
  done < "$saved"
  rm -f "$saved"
}

case $cmd in
  check) check ;;
  apply) apply ;;
  revert) revert ;;
  *) usage ;;
esac
