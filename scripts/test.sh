#!/usr/bin/env bash
# The project's one test command: installs what the tests need, runs every check, stops what
# it started. `.ci/run` calls exactly this. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd for tests/etcd_bench.rs, on ports of its own so that an etcd already on 2379 is left alone.
ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800

scratch=$(mktemp -d)
log="$scratch/test.log"
etcd_pid=
cleanup() {
  if [[ -n "$etcd_pid" ]]; then
    kill "$etcd_pid" 2>/dev/null || true
    wait "$etcd_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

echo "==> rustfmt and clippy components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> protoc (vendored)"
source scripts/protoc-env.sh
echo "PROTOC=$PROTOC"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo doc (warnings, such as broken links, are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --workspace --no-deps --all-features

echo "==> etcd on $ETCD_CLIENT"
if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (apt)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends etcd-server; } >"$scratch/apt.log" 2>&1; then
    cat "$scratch/apt.log" >&2
    echo "installing etcd-server failed" >&2
    exit 1
  fi
fi
if (exec 3<>"/dev/tcp/${ETCD_CLIENT%:*}/${ETCD_CLIENT#*:}") 2>/dev/null; then
  echo "something already listens on $ETCD_CLIENT; stop it and rerun" >&2
  exit 1
fi
etcd --name kvtest --data-dir "$scratch/etcd" \
  --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
  --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
  --initial-cluster "kvtest=http://$ETCD_PEER" --initial-cluster-state new \
  >"$scratch/etcd.log" 2>&1 &
etcd_pid=$!
etcd_healthy() {
  if command -v curl >/dev/null; then
    curl -fsS --max-time 1 "http://$ETCD_CLIENT/health" 2>/dev/null | grep -q '"health":"true"'
  else
    (exec 3<>"/dev/tcp/${ETCD_CLIENT%:*}/${ETCD_CLIENT#*:}") 2>/dev/null
  fi
}
for attempt in $(seq 60); do
  if etcd_healthy; then
    break
  fi
  if ! kill -0 "$etcd_pid" 2>/dev/null || [[ $attempt == 60 ]]; then
    tail -n 20 "$scratch/etcd.log" >&2
    echo "etcd did not become healthy on $ETCD_CLIENT within 30 s" >&2
    exit 1
  fi
  sleep 0.5
done
export KV_TEST_ETCD=$ETCD_CLIENT

echo "==> cargo test (workspace, all features)"
cargo test --workspace --all-targets --all-features 2>&1 | tee "$log"
cargo test --workspace --doc --all-features 2>&1 | tee -a "$log"

echo "==> the main job, short CI size (the default scenario runs 15 s; see README)"
cargo run --quiet --all-features --example chaos_stack -- --duration 3 --seed 1

# One closing line with the totals of every cargo test run above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
