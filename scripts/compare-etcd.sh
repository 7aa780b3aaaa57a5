#!/usr/bin/env bash
# The whole performance picture in one run, all on loopback, every target loaded by the same
# client (`kvctl bench`, closed loop, 1 s warm-up not counted) and interleaved in rounds so
# machine noise hits them alike. Medians of the rounds, and ratios.
#
#   local:     the bare tonic baseline (`kvctl bench-server --bare`), kv-server on memory,
#              file: and redb:, and a single-member etcd, 4 connections x 64 in flight:
#              update (the steady state of OCC), get, put (creates). Ratios: memory to bare,
#              file/redb to etcd. memory-metrics is kv-server on memory with
#              --metrics-listen (update and get only): what the metrics layer costs, which a
#              server without the flag leaves out. Then p99 at the same load: every target but
#              memory-metrics open-loop (`--rate`) at 80 % of etcd's update median.
#   sweep:     update throughput and p99 against the calls in flight (1, 4, 16, 64, 256) for
#              the same five targets, rendered as an SVG chart (examples/bench_chart.rs).
#   cores:     bare and memory with the server pinned to one core (`taskset -c 0`, the client
#              on the other) and unpinned on both cores (sharing them with the client).
#   ab:        bare and memory alone (update and get, 4 x 64), for many rounds: the median and
#              the middle half of the per-round ratios memory/bare. Not in the default parts;
#              `scripts/compare-etcd.sh 25 3 ab` is the README's best estimate of the ratios.
#   scale-out: a 3-member etcd cluster (scripts/etcd-cluster.sh) used directly and through 1,
#              2 and 3 kv-server frontends (`--storage etcd:`); reads compared with etcd's
#              linearizable and serializable Range. Connections go round-robin.
#
# The targets that keep nothing on disk (bare, memory, memory-metrics and the cores part's
# servers) are started afresh at every round: two identical processes can differ by a tenth
# of their CPU per call for as long as they run (where their memory and threads happen to
# land), and one process per target would carry its luck into every round. file:, redb: and
# etcd keep their data through the run.
#
# Beside each run's ops/s and p99, the server's own CPU per call (user + system from
# /proc/PID/stat, over the whole run, warm-up calls counted too): at full load, where the
# throughput goes. (Not for scale-out, whose targets are several processes.)
#
# Usage: scripts/compare-etcd.sh [ROUNDS=3] [SECS=5] [PARTS="local sweep cores scale-out"]
# (PARTS may also name ab.)
# Environment: OUT=DIR (default target/compare; every run's JSON goes to DIR/runs.jsonl and the
# sweep's medians to DIR/sweep.tsv), CHART=PATH (default DIR/update-sweep.svg; the README's
# chart is docs/perf-update.svg), SWEEP_SECS (default 3), WARMUP (seconds, default 1),
# ETCD_PORT (default 23790: etcd's client ports start there, its peer ports 10 above),
# PROFILE (default release; `dev` builds fast, for checking the script itself, not for figures).
# put = create a fresh key (etcd: a Txn comparing version == 0); update = write the slot's own
# key with the version it got back (etcd: a Txn comparing version); get = read one of 1000
# preloaded keys (etcd: linearizable Range unless said otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
parts=${3:-local sweep cores scale-out}
out=${OUT:-target/compare}
chart=${CHART:-$out/update-sweep.svg}
sweep_secs=${SWEEP_SECS:-3}
warmup=${WARMUP:-1}
etcd_port=${ETCD_PORT:-23790}
profile=${PROFILE:-release}

echo "==> building kv-server, kvctl and the chart renderer ($profile)"
cargo build --quiet --profile "$profile" --bin kv-server --bin kvctl --example bench_chart
bin=target/$([[ $profile == dev ]] && echo debug || echo "$profile")
mkdir -p "$out"
: >"$out/runs.jsonl"

# Data under target/ (on disk, like etcd's), not a tmpfs that would make fsync free.
data=$(mktemp -d -p target compare-etcd.XXXXXX)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  server_pid=()
}
cleanup() {
  stop_all
  scripts/etcd-cluster.sh stop "$data/cluster" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

declare -A addr target flags pin server_pid launch
# start NAME CMD...: starts a server (prefixed by ${pin[NAME]}) and waits for its address.
start() {
  local name=$1 log="$data/$1.out"
  shift
  # shellcheck disable=SC2086
  ${pin[$name]:-} "$@" >"$log" 2>/dev/null &
  pids+=($!)
  server_pid[$name]=$!
  for _ in $(seq 100); do
    grep -q "^listening on" "$log" 2>/dev/null && break
    sleep 0.1
  done
  addr[$name]=$(sed -n 's/^listening on //p' "$log")
  [[ -n ${addr[$name]} ]] || { echo "$name did not start" >&2; exit 1; }
  target[$name]="kv://${addr[$name]}"
}
# start_fresh NAME CMD...: `start` for a server that keeps nothing on disk, which
# restart_fresh starts anew at every round (see the top of this file).
start_fresh() {
  launch[$1]=$(printf '%q ' "${@:2}")
  start "$@"
}
start_kv() {
  local how=start
  [[ $2 == memory ]] && how=start_fresh
  $how "$1" "$bin/kv-server" --listen 127.0.0.1:0 --storage "$2"
}
start_bare() { start_fresh "$1" "$bin/kvctl" bench-server --bare --listen 127.0.0.1:0; }
# restart_fresh NAMES...: restarts those of NAMES that were started with start_fresh.
restart_fresh() {
  local name old pid
  for name in "$@"; do
    [[ -n ${launch[$name]:-} ]] || continue
    old=${server_pid[$name]}
    kill "$old" 2>/dev/null || true
    wait "$old" 2>/dev/null || true
    local kept=()
    for pid in "${pids[@]}"; do [[ $pid == "$old" ]] || kept+=("$pid"); done
    pids=("${kept[@]}")
    eval "start $name ${launch[$name]}"
  done
}

start_etcd() { # a single member on $etcd_port (clients) and 10 above (peers)
  local peer=$((etcd_port + 10))
  if ! command -v etcd >/dev/null; then
    echo "installing etcd-server (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  fi
  for port in "$etcd_port" "$peer"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "something already listens on 127.0.0.1:$port; stop it and rerun" >&2
      exit 1
    fi
  done
  etcd --name cmp --data-dir "$data/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "cmp=http://127.0.0.1:$peer" --initial-cluster-state new \
    >"$data/etcd.log" 2>&1 &
  pids+=($!)
  server_pid[etcd]=$!
  for attempt in $(seq 61); do
    (
      exec 3<>"/dev/tcp/127.0.0.1/$etcd_port" || exit 1
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
  target[etcd]=etcd://127.0.0.1:$etcd_port
}

field() { grep -o "\"$1\":[0-9.]*" | head -1 | cut -d: -f2; }
# cpu_ticks PID: the user + system CPU the process has used so far, in clock ticks (the fields
# after the command name, which is in parentheses, so a name with spaces cannot shift them).
# Prints nothing if the process is gone.
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  sed 's/.*) //' <<<"$stat" | awk '{ print $12 + $13 }'
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# bench PART ROUND NAME WORKLOAD CLIENTS CONCURRENCY SECS [FLAGS...]: one run; records its JSON
# in runs.jsonl and "ops p99 server_us" in REPLY. server_us is the server's own CPU (user +
# system, from /proc) per call answered, warm-up included on both sides; "-" where the target
# is not one process this script started (the scale-out cluster).
bench() {
  local part=$1 round=$2 name=$3 workload=$4 clients=$5 conc=$6 s=$7
  shift 7
  local json pid=${server_pid[$name]:-} ticks=
  [[ -n $pid ]] && ticks=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086
  if ! json=$(${pin[client-$name]:-} "$bin/kvctl" bench --target "${target[$name]}" \
    --workload "$workload" --clients "$clients" --concurrency "$conc" --duration "$s" \
    --warmup "$warmup" --key-prefix "$part-r$round-" ${flags[$name]:-} "$@" --json \
    2>"$data/bench.err"); then
    cat "$data/bench.err" >&2
    echo "$part round $round: $workload on $name failed (its report, if any, is in runs.jsonl)" >&2
  fi
  [[ -n $json ]] || json='{"ops_per_sec":0,"p99_us":0}'
  local ops p99 measured warm answered server_us=- after=
  ops=$(field ops_per_sec <<<"$json")
  p99=$(field p99_us <<<"$json")
  # A failed run's stand-in report has no counts.
  measured=$(field ops <<<"$json" || true)
  warm=$(field warmup_ops <<<"$json" || true)
  answered=$((${measured:-0} + ${warm:-0}))
  [[ -n $ticks ]] && after=$(cpu_ticks "$pid")
  if [[ -n $after ]] && ((answered > 0)); then
    server_us=$(awk -v t="$((after - ticks))" -v hz="$(getconf CLK_TCK)" -v n="$answered" \
      'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  fi
  printf '{"part":"%s","round":%s,"target":"%s","workload":"%s","in_flight":%s,"server_pid":%s,"server_cpu_us_per_op":%s,"report":%s}\n' \
    "$part" "$round" "$name" "$workload" $((clients * conc)) "${pid:-null}" \
    "$([[ $server_us == - ]] && echo null || echo "$server_us")" "$json" >>"$out/runs.jsonl"
  printf '%-9s round %s  %-6s %-9s %4s in flight %10.0f ops/s  p99 %7s us  server %5s us/op\n' \
    "$part" "$round" "$workload" "$name" $((clients * conc)) "$ops" "$p99" "$server_us"
  REPLY="$ops $p99 $server_us"
}

# rounds_of PART "WORKLOADS" NAMES...: ROUNDS interleaved rounds at 4 x 64, the order of the
# targets rotated by one each round; medians stored as
# ops[PART.WORKLOAD.NAME], p99[...] and cpu[...] (server CPU per call, us).
declare -A ops p99 cpu series
rounds_of() {
  local part=$1 workloads=$2
  shift 2
  local -A o p c
  local targets=("$@") run_ops run_p99 run_us
  for round in $(seq "$rounds"); do
    # Each round starts one target further on, so no target always runs right after another.
    local order=("${targets[@]:round % ${#targets[@]}}" "${targets[@]:0:round % ${#targets[@]}}")
    if ((round > 1)); then restart_fresh "${targets[@]}"; fi
    for workload in $workloads; do
      for name in "${order[@]}"; do
        [[ $workload != get && $name == *-ser ]] && continue
        [[ $workload == put && $name == *-metrics ]] && continue
        bench "$part" "$round" "$name" "$workload" 4 64 "$secs"
        read -r run_ops run_p99 run_us <<<"$REPLY"
        o[$workload.$name]+="$run_ops "
        p[$workload.$name]+="$run_p99 "
        c[$workload.$name]+="$run_us "
      done
    done
  done
  for key in "${!o[@]}"; do
    series[$part.$key]=${o[$key]}
    ops[$part.$key]=$(echo "${o[$key]}" | median)
    p99[$part.$key]=$(echo "${p[$key]}" | median)
    cpu[$part.$key]=$(echo "${c[$key]}" | median)
  done
}

# report PART BASE "WORKLOADS" NAMES...: the medians and their ratios to BASE.
report() {
  local part=$1 base=$2 workloads=$3
  shift 3
  echo
  echo "$part: medians of $rounds rounds, ${secs} s each, 4 connections x 64 in flight:"
  for workload in $workloads; do
    local b=${ops[$part.$workload.$base]:-0}
    for name in "$@"; do
      local m=${ops[$part.$workload.$name]:-}
      [[ -n $m ]] || continue
      printf '  %-6s %-9s %10.0f ops/s  %5sx %-9s p99 %7s us  server %5s us/op\n' \
        "$workload" "$name" "$m" "$(ratio "$m" "$b")" "$base" "${p99[$part.$workload.$name]}" \
        "${cpu[$part.$workload.$name]}"
    done
  done
  echo
}

for part in $parts; do
  case $part in
  local)
    start_etcd
    start_bare bare
    start_kv memory memory
    start_kv file "file:$data/kv.log"
    start_kv redb "redb:$data/kv.redb"
    start_fresh memory-metrics "$bin/kv-server" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
    names=(bare memory file redb etcd)
    rounds_of local "update get put" "${names[@]}" memory-metrics
    report local bare "update get" bare memory memory-metrics
    report local etcd "update put" etcd file redb memory
    # p99 at the same load: open loop at 80 % of what etcd sustains.
    rate=$(awk -v m="${ops[local.update.etcd]}" 'BEGIN { printf "%d", m * 0.8 }')
    echo "local: p99 at the same load, update open-loop at $rate calls/s (80 % of etcd's median):"
    declare -A at_rate=()
    for round in $(seq "$rounds"); do
      restart_fresh "${names[@]}"
      for name in "${names[@]}"; do
        bench local-rate "$round" "$name" update 4 64 "$secs" --rate "$rate"
        read -r _ run_p99 _ <<<"$REPLY"
        at_rate[$name]+="$run_p99 "
      done
    done
    etcd_p99=$(echo "${at_rate[etcd]}" | median)
    for name in "${names[@]}"; do
      m=$(echo "${at_rate[$name]}" | median)
      printf '  update at %s/s  %-9s p99 %7s us  %5sx etcd\n' "$rate" "$name" "$m" "$(ratio "$m" "$etcd_p99")"
    done
    echo
    stop_all
    ;;
  sweep)
    start_etcd
    start_bare bare
    start_kv memory memory
    start_kv file "file:$data/sweep.log"
    start_kv redb "redb:$data/sweep.redb"
    names=(bare memory file redb etcd)
    shapes=("1 1" "1 4" "4 4" "4 16" "4 64")
    declare -A so=() sp=()
    for round in $(seq "$rounds"); do
      if ((round > 1)); then restart_fresh "${names[@]}"; fi
      for shape in "${shapes[@]}"; do
        read -r clients conc <<<"$shape"
        for name in "${names[@]}"; do
          bench sweep "$round" "$name" update "$clients" "$conc" "$sweep_secs"
          read -r run_ops run_p99 _ <<<"$REPLY"
          so[$name.$((clients * conc))]+="$run_ops "
          sp[$name.$((clients * conc))]+="$run_p99 "
        done
      done
    done
    echo
    echo "sweep: update, medians of $rounds rounds, ${sweep_secs} s each (ops/s, p99 us):"
    printf '# target\tin_flight\tops_per_sec\tp99_us\n' >"$out/sweep.tsv"
    for name in "${names[@]}"; do
      line=$(printf '  %-7s' "$name")
      for shape in "${shapes[@]}"; do
        read -r clients conc <<<"$shape"
        n=$((clients * conc))
        m=$(echo "${so[$name.$n]}" | median)
        p=$(echo "${sp[$name.$n]}" | median)
        printf '%s\t%s\t%s\t%s\n' "$name" "$n" "$m" "$p" >>"$out/sweep.tsv"
        line+=$(printf '  %3s: %7.0f %6s' "$n" "$m" "$p")
      done
      echo "$line"
    done
    "$bin/examples/bench_chart" "$out/sweep.tsv" "$chart" \
      "kvctl bench --workload update: medians of $rounds rounds, $(nproc) cores shared with the client"
    echo "chart: $chart"
    echo
    stop_all
    ;;
  cores)
    if ! command -v taskset >/dev/null || ! taskset -c 0 true 2>/dev/null ||
      ! taskset -c 1 true 2>/dev/null; then
      echo "cores: needs taskset and CPUs 0 and 1 usable; skipped" >&2
      continue
    fi
    # 1 core: the server on core 0, the client on core 1. 2 cores: neither pinned.
    pin[bare-1]="taskset -c 0" pin[memory-1]="taskset -c 0"
    pin[client-bare-1]="taskset -c 1" pin[client-memory-1]="taskset -c 1"
    start_bare bare-1
    start_kv memory-1 memory
    start_bare bare-2
    start_kv memory-2 memory
    rounds_of cores "update get" bare-1 memory-1 bare-2 memory-2
    echo
    echo "cores: medians of $rounds rounds, ${secs} s each, 4 x 64 (ops/s, p99 us, server CPU us/op)"
    echo "  server on         workload  bare                   memory                 memory/bare"
    for cores in 1 2; do
      for workload in update get; do
        b=${ops[cores.$workload.bare-$cores]} m=${ops[cores.$workload.memory-$cores]}
        printf '  %-17s %-8s %7.0f %6s %5s  %7.0f %6s %5s  %5s\n' \
          "$([[ $cores == 1 ]] && echo "1 core (pinned)" || echo "2 cores (shared)")" "$workload" \
          "$b" "${p99[cores.$workload.bare-$cores]}" "${cpu[cores.$workload.bare-$cores]}" \
          "$m" "${p99[cores.$workload.memory-$cores]}" "${cpu[cores.$workload.memory-$cores]}" \
          "$(ratio "$m" "$b")"
      done
    done
    echo
    stop_all
    ;;
  ab)
    start_bare bare
    start_kv memory memory
    rounds_of ab "update get" bare memory
    report ab bare "update get" bare memory
    echo "ab: memory / bare, round by round (the median, and the middle half of the rounds):"
    for workload in update get; do
      # shellcheck disable=SC2086
      paste -d' ' <(printf '%s\n' ${series[ab.$workload.memory]}) \
        <(printf '%s\n' ${series[ab.$workload.bare]}) |
        awk '{ printf "%.3f\n", $1 / $2 }' | sort -g |
        awk -v w="$workload" '{ v[NR] = $1 } END {
          printf "  %-6s %.2f  (%.2f to %.2f over %d rounds)\n", w, v[int((NR + 1) / 2)],
            v[int((NR + 3) / 4)], v[int((3 * NR + 1) / 4)], NR }'
    done
    echo
    stop_all
    ;;
  scale-out)
    spec=$(scripts/etcd-cluster.sh start "$data/cluster" "$etcd_port")
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
    rounds_of scale-out "put cas" etcd kv-etcd-1 kv-etcd-2 kv-etcd-3
    report scale-out etcd "put cas" etcd kv-etcd-1 kv-etcd-2 kv-etcd-3
    rounds_of reads "get" etcd-lin etcd-ser kv-etcd-1 kv-etcd-2 kv-etcd-3
    report reads etcd-lin "get" etcd-lin etcd-ser kv-etcd-1 kv-etcd-2 kv-etcd-3
    stop_all
    scripts/etcd-cluster.sh stop "$data/cluster"
    ;;
  *)
    echo "unknown part $part (expected local, sweep, cores, scale-out, ab)" >&2
    exit 2
    ;;
  esac
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "every run: $out/runs.jsonl"
