#!/usr/bin/env bash
# The project's one test command: installs what the tests need, runs every check, stops what
# it started. `.ci/run` calls exactly this. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Incremental caches only help rebuilds after edits, and a test run is one clean build; they
# doubled the size of target/ (CI machines have had little disk).
export CARGO_INCREMENTAL=0

# A 3-member etcd cluster for the etcd tests, on ports of its own (clients 23790-23792, peers
# 23800-23802), so that an etcd already on 2379 is left alone.
ETCD_BASE_PORT=23790

scratch=$(mktemp -d)
log="$scratch/test.log"
cleanup() {
  scripts/etcd-cluster.sh stop "$scratch/etcd" || true
  rm -rf "$scratch"
}
trap cleanup EXIT

echo "==> rustfmt and clippy components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo doc (warnings, such as broken links, are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --workspace --no-deps --all-features

echo "==> cargo package (both crates package and build from their packaged sources; nothing is published)"
# Cargo unpacks the packaging step's temporary registry under $CARGO_HOME/registry/*/-<hash>/
# (local registries are named with a leading '-') and never unpacks the same version again, so
# a later run from the same folder would verify kvcore against an earlier run's grpc-layers.
# Forget those copies first. --allow-dirty: a developer's uncommitted work is packaged as it is.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/{src,cache,index}/-*
cargo package --workspace --quiet --allow-dirty

echo "==> chromium (headless, for the HTML report test)"
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
  && ! command -v google-chrome >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium; } \
    >"$scratch/chromium-install.log" 2>&1; then
    cat "$scratch/chromium-install.log"
    echo "installing chromium failed (the HTML report test needs it)" >&2
    exit 1
  fi
fi

echo "==> etcd: 3 members on 127.0.0.1:$ETCD_BASE_PORT-$((ETCD_BASE_PORT + 2))"
spec=$(scripts/etcd-cluster.sh start "$scratch/etcd" "$ETCD_BASE_PORT")
export KV_TEST_ETCD=${spec#etcd:}
echo "KV_TEST_ETCD=$KV_TEST_ETCD"

echo "==> cargo test (workspace, all features)"
cargo test --workspace --all-targets --all-features 2>&1 | tee "$log"
cargo test --workspace --doc --all-features 2>&1 | tee -a "$log"
echo "==> the wire-contract tests again, through kvctl chaos's faulting proxy (no faults)"
KV_TEST_VIA_PROXY=1 cargo test --all-features --test wire_contract 2>&1 | tee -a "$log"

echo "==> scripts/compare-etcd.sh at toy sizes on the debug build (checks the script, not figures)"
cmp="$scratch/compare"
if ! OUT="$cmp" ETCD_PORT=23850 PROFILE=dev WARMUP=0.2 SWEEP_SECS=0.3 \
  scripts/compare-etcd.sh 1 0.5 "local sweep cores ab" >"$cmp.log" 2>&1; then
  cat "$cmp.log"
  echo "compare-etcd.sh failed" >&2
  exit 1
fi
# local: 3 workloads x 5 targets + 2 with metrics + 5 at the same rate; sweep: 5 x 5; cores:
# 2 x 4; ab: 2 x 2, and its per-round ratios. Every run reported and answered, and the chart
# has every target. (Errors are shown, not failed on: on a loaded CI machine a toy run against
# etcd may see one, and that is not the script's doing.)
runs=$(grep -c '"ops_per_sec":' "$cmp/runs.jsonl" || true)
idle=$(grep -cE '"ops_per_sec":0(\.0)?,' "$cmp/runs.jsonl" || true)
# Every target of these parts is one process the script started: each run has its CPU per call.
cpu=$(grep -cE '"server_cpu_us_per_op":[0-9.]+,' "$cmp/runs.jsonl" || true)
if [[ $runs != 59 || $idle != 0 || $cpu != 59 || $(grep -vc '^#' "$cmp/sweep.tsv") != 25 ]] ||
  [[ $(grep -cE '^  (update|get) +[0-9.]+  \([0-9.]+ to [0-9.]+ over 1 rounds\)$' "$cmp.log") != 2 ]] ||
  ! grep -q '<svg' "$cmp/update-sweep.svg" ||
  ! grep -q 'redb' "$cmp/update-sweep.svg"; then
  cat "$cmp.log"
  echo "compare-etcd.sh: expected 59 runs, all answered and with the server's CPU (got $runs," \
    "$idle idle, $cpu with CPU), 25 sweep medians, a chart and ab's two ratios" >&2
  exit 1
fi
# bare keeps nothing on disk, so the rate rounds that follow the local ones start it afresh.
pid_of() { grep "\"part\":\"$1\",.*\"target\":\"bare\"" "$cmp/runs.jsonl" | grep -o '"server_pid":[0-9]*' | sort -u; }
if [[ -z $(pid_of local) || $(pid_of local) == "$(pid_of local-rate)" ]]; then
  echo "compare-etcd.sh: bare was not restarted between rounds ($(pid_of local) then $(pid_of local-rate))" >&2
  exit 1
fi
grep -v '"errors":0,' "$cmp/runs.jsonl" | cut -c1-400 || true
grep -A6 '^local: medians' "$cmp.log"

echo "==> the main job, short CI size (the default scenario runs 15 s; see README)"
cargo run --quiet --example chaos_stack -- --duration 3 --seed 1
echo "==> the main job on etcd with 3 frontends, short CI size"
cargo run --quiet --example chaos_stack -- --duration 3 --seed 1 --frontends 3 \
  --storage "etcd:$KV_TEST_ETCD/ci-chaos-$(date +%s)-$$"

# One closing line with the totals of every cargo test run above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
