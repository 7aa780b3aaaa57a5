#!/usr/bin/env bash
# A 3-member etcd cluster on one machine, on loopback: what `--storage etcd:` needs to try
# scale-out locally, and what scripts/test.sh runs the tests against.
#
# Usage: scripts/etcd-cluster.sh start DIR [BASE_PORT=2379]
#        scripts/etcd-cluster.sh stop DIR
# start: members m0, m1, m2 serve clients on BASE_PORT, +1, +2 and talk to each other on
#        BASE_PORT+10, +11, +12; data and logs go in DIR (created). It returns once the cluster
#        has a leader and prints the spec to use, e.g. `etcd:127.0.0.1:2379,127.0.0.1:2380,…`.
#        Installs Debian's etcd-server first if `etcd` is missing (needs root).
# stop:  kills the members started in DIR (their pids are in DIR/pids) and waits for them.
set -euo pipefail

usage() { sed -n '5,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 2 ]] || usage
cmd=$1 dir=$2 base=${3:-2379}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# etcd's /health says true only once the member has a leader (plain HTTP, no curl needed).
healthy() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    timeout 2 cat <&3 | grep -q '"health":"true"'
  ) 2>/dev/null
}
stop_members() {
  [[ -f "$dir/pids" ]] || return 0
  while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$dir/pids"
  while read -r pid; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done <"$dir/pids"
  rm -f "$dir/pids"
}

case "$cmd" in
start)
  if ! command -v etcd >/dev/null; then
    echo "installing etcd-server (apt)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends etcd-server; } >/tmp/etcd-apt.log 2>&1; then
      cat /tmp/etcd-apt.log >&2
      echo "installing etcd-server failed: install etcd yourself and rerun" >&2
      exit 1
    fi
  fi
  mkdir -p "$dir"
  cluster= endpoints=
  for i in 0 1 2; do
    for port in $((base + i)) $((base + 10 + i)); do
      if port_open "$port"; then
        echo "something already listens on 127.0.0.1:$port; pick another BASE_PORT" >&2
        exit 1
      fi
    done
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 + i))"
    endpoints+="${endpoints:+,}127.0.0.1:$((base + i))"
  done
  : >"$dir/pids"
  for i in 0 1 2; do
    client="http://127.0.0.1:$((base + i))" peer="http://127.0.0.1:$((base + 10 + i))"
    etcd --name "m$i" --data-dir "$dir/m$i" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "kvcore-$base" >"$dir/m$i.log" 2>&1 &
    echo $! >>"$dir/pids"
  done
  for attempt in $(seq 60); do
    up=0
    for i in 0 1 2; do healthy $((base + i)) && up=$((up + 1)); done
    [[ $up == 3 ]] && break
    while read -r pid; do
      if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$dir"/m*.log >&2
        echo "an etcd member exited during start (logs above)" >&2
        stop_members
        exit 1
      fi
    done <"$dir/pids"
    if [[ $attempt == 60 ]]; then
      tail -n 20 "$dir"/m*.log >&2
      echo "the etcd cluster did not become healthy within 30 s" >&2
      stop_members
      exit 1
    fi
    sleep 0.5
  done
  echo "etcd:$endpoints"
  ;;
stop)
  stop_members
  ;;
*) usage ;;
esac
