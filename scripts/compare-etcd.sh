#!/usr/bin/env bash
# Throughput side by side in one run, all on loopback, through the same client (`kvctl bench`,
# 4 connections x 64 calls in flight). Two parts, each with its own etcd:
#
#   local:     kv-server on file: and redb: against a single-member etcd, all data on the same
#              disk; plus kv-server on memory: as the ceiling without a disk.
#   scale-out: a 3-member etcd cluster (scripts/etcd-cluster.sh) used directly and through 1, 2
#              and 3 kv-server frontends (`--storage etcd:`); reads compared with etcd's
#              linearizable and serializable Range. Every client connection goes to one of the
#              members or frontends, round-robin.
#
# Usage: scripts/compare-etcd.sh [ROUNDS=3] [SECS=5] [PARTS="local scale-out"]
# Each round runs every target once, interleaved, so machine noise hits them alike; the script
# prints every run, then the medians and the ratios to etcd. put = create a fresh key (etcd: a
# Txn comparing version == 0), cas = read, then write the version read (etcd: Range, then a
# Txn), get = read one of 1000 preloaded keys.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
parts=${3:-local scale-out}

echo "==> building kv-server and kvctl (release)"
cargo build --quiet --release --bin kv-server --bin kvctl
bin=target/release

# Data under target/ (on disk, like etcd's), not a tmpfs that would make fsync free.
data=$(mktemp -d -p target compare-etcd.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  scripts/etcd-cluster.sh stop "$data/cluster" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

start_kv() { # $1 = name, $2 = storage spec; prints HOST:PORT (pids must stick: no subshell)
  local out="$data/$1.out"
  "$bin/kv-server" --listen 127.0.0.1:0 --storage "$2" >"$out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q "^listening on" "$out" 2>/dev/null && break
    sleep 0.1
  done
  addr[$1]=$(sed -n 's/^listening on //p' "$out")
}

declare -A addr target flags runs
# run_part NAME BASE WORKLOADS TARGETS...: rounds of every workload x target, then medians and
# ratios to BASE (per workload: BASE, or BASE-lin for reads when it exists).
run_part() {
  local part=$1 base=$2 workloads=$3
  shift 3
  local names=("$@")
  for round in $(seq "$rounds"); do
    for workload in $workloads; do
      for name in "${names[@]}"; do
        [[ $workload != get && $name == *-ser ]] && continue
        local ops
        # shellcheck disable=SC2086
        ops=$("$bin/kvctl" bench --target "${target[$name]}" --workload "$workload" \
          --clients 4 --concurrency 64 --duration "$secs" --key-prefix "$part-r$round-" \
          ${flags[$name]:-} --json | grep -o '"ops_per_sec":[0-9.]*' | cut -d: -f2)
        printf '%-9s round %s  %-4s %-9s %10.0f ops/s\n' "$part" "$round" "$workload" "$name" "$ops"
        runs[$part.$workload.$name]+="$ops "
      done
    done
  done
  echo
  echo "$part: medians of $rounds rounds, ${secs}s each, 4 connections x 64 in flight:"
  for workload in $workloads; do
    local b
    b=$(echo "${runs[$part.$workload.$base]}" | median)
    for name in "${names[@]}"; do
      [[ -n "${runs[$part.$workload.$name]:-}" ]] || continue
      local m
      m=$(echo "${runs[$part.$workload.$name]}" | median)
      awk -v w="$workload" -v n="$name" -v m="$m" -v b="$b" -v base="$base" \
        'BEGIN { printf "  %-4s %-9s %10.0f ops/s  %5.2fx %s\n", w, n, m, m / b, base }'
    done
  done
  echo
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

for part in $parts; do
  case $part in
  local)
    if ! command -v etcd >/dev/null; then
      echo "installing etcd-server (apt)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    fi
    for port in 23790 23800; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "something already listens on 127.0.0.1:$port; stop it and rerun" >&2
        exit 1
      fi
    done
    etcd --name cmp --data-dir "$data/etcd" \
      --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
      --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
      --initial-cluster cmp=http://127.0.0.1:23800 --initial-cluster-state new \
      >"$data/etcd.log" 2>&1 &
    etcd_pid=$!
    pids+=($etcd_pid)
    for attempt in $(seq 61); do
      (
        exec 3<>/dev/tcp/127.0.0.1/23790 || exit 1
        printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        timeout 2 cat <&3 | grep -q '"health":"true"'
      ) 2>/dev/null && break
      if [[ $attempt == 61 ]]; then
        tail -n 20 "$data/etcd.log" >&2
        echo "etcd did not become healthy within 30 s" >&2
        exit 1
      fi
      sleep 0.5
    done
    target[etcd]=etcd://127.0.0.1:23790
    for name in file redb memory; do
      case $name in
      file) start_kv file "file:$data/kv.log" ;;
      redb) start_kv redb "redb:$data/kv.redb" ;;
      # Not durable: the ceiling this client and machine reach with the same server, no disk.
      memory) start_kv memory memory ;;
      esac
      target[$name]="kv://${addr[$name]}"
    done
    run_part local etcd "put cas" etcd file redb memory
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
    ;;
  scale-out)
    spec=$(scripts/etcd-cluster.sh start "$data/cluster" 23790)
    members=${spec#etcd:}
    target[etcd]="etcd://$members"
    target[etcd-lin]="etcd://$members"
    target[etcd-ser]="etcd://$members"
    flags[etcd-ser]=--serializable
    frontends=
    for n in 1 2 3; do
      start_kv "kv$n" "$spec/compare"
      frontends+="${frontends:+,}${addr[kv$n]}"
      target[kv-etcd-$n]="kv://$frontends"
    done
    run_part scale-out etcd "put cas" etcd kv-etcd-1 kv-etcd-2 kv-etcd-3
    run_part reads etcd-lin "get" etcd-lin etcd-ser kv-etcd-1 kv-etcd-2 kv-etcd-3
    ;;
  *)
    echo "unknown part $part (expected local, scale-out)" >&2
    exit 2
    ;;
  esac
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
