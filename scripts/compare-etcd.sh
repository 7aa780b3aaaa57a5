#!/usr/bin/env bash
# Durable put throughput, side by side in one run: kv-server on file: and redb: against a
# single-member etcd (Debian's etcd-server), all on loopback, all data on the same disk; plus
# kv-server on memory: as the ceiling without a disk.
#
# Usage: scripts/compare-etcd.sh [ROUNDS=3] [SECS=5]
# Each round runs every target once, interleaved, so machine noise hits them alike; the script
# prints every run and then the medians and the ratios to etcd. Load: 4 connections x 64 calls
# in flight (`kvctl bench --clients 4 --concurrency 64`); put = create a fresh key (etcd: a Txn
# comparing version == 0), cas = read then write the version read (etcd: Range, then a Txn).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800

source scripts/protoc-env.sh
command -v etcd >/dev/null || {
  echo "installing etcd-server (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
}
echo "==> building kv-server and kvctl (release, --features etcd)"
cargo build --quiet --release --features etcd --bin kv-server --bin kvctl
bin=target/release

# Data under target/ (on disk, like etcd's), not a tmpfs that would make fsync free.
data=$(mktemp -d -p target compare-etcd.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

etcd --name cmp --data-dir "$data/etcd" \
  --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
  --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
  --initial-cluster "cmp=http://$ETCD_PEER" --initial-cluster-state new >"$data/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
  curl -fsS --max-time 1 "http://$ETCD_CLIENT/health" 2>/dev/null | grep -q true && break
  sleep 0.5
done

start_kv() { # $1 = name, $2 = storage spec; sets target[$1] (not in a subshell: pids must stick)
  local out="$data/$1.out"
  "$bin/kv-server" --listen 127.0.0.1:0 --storage "$2" >"$out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q "^listening on" "$out" 2>/dev/null && break
    sleep 0.1
  done
  target[$1]="kv://$(sed -n 's/^listening on //p' "$out")"
}
declare -A target=([etcd]="etcd://$ETCD_CLIENT")
start_kv file "file:$data/kv.log"
start_kv redb "redb:$data/kv.redb"
# Not durable: the ceiling this client and machine reach with the same server and no disk.
start_kv memory memory
names=(etcd file redb memory)

declare -A runs
for round in $(seq "$rounds"); do
  for workload in put cas; do
    for name in "${names[@]}"; do
      ops=$("$bin/kvctl" bench --target "${target[$name]}" --workload "$workload" \
        --clients 4 --concurrency 64 --duration "$secs" --key-prefix "r$round-" --json |
        grep -o '"ops_per_sec":[0-9.]*' | cut -d: -f2)
      printf 'round %s  %-4s %-6s %10.0f ops/s\n' "$round" "$workload" "$name" "$ops"
      runs[$workload.$name]+="$ops "
    done
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "medians of $rounds rounds, ${secs}s each, 4 connections x 64 in flight:"
for workload in put cas; do
  base=$(echo "${runs[$workload.etcd]}" | median)
  for name in "${names[@]}"; do
    m=$(echo "${runs[$workload.$name]}" | median)
    awk -v w="$workload" -v n="$name" -v m="$m" -v b="$base" \
      'BEGIN { printf "  %-4s %-6s %10.0f ops/s  %5.2fx etcd\n", w, n, m, m / b }'
  done
done
