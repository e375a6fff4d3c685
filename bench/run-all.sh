#!/usr/bin/env bash
# Run every benchmark, one after the other, and print a markdown table of the figures with the
# machine they were measured on and the commands that produced them (for docs/performance.md).
#
#   bench/run-all.sh
#   REPEAT=5 STORM_DEVICES=20000 IDLE_COUNTS="10000" BENCHES="provision-storm fanout" bench/run-all.sh
#
# Sizes: STORM_DEVICES (10000), CONCURRENCY (256), TELEMETRY_DEVICES (1000),
# TELEMETRY_DURATION seconds (30), IN_FLIGHT (8), FANOUT_DEVICES (1000),
# IDLE_COUNTS ("10000 50000"), COLD_DEVICES (0), REPEAT (3). BENCHES picks and orders the
# benchmarks. Each benchmark's full output goes to RESULTS_DIR (default
# bench/results/<UTC time>/), with summary.md, the table printed at the end.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCHES=${BENCHES:-provision-storm telemetry amqp routing eventhubs fanout idle-memory bounded-memory cold-start}
STORM_DEVICES=${STORM_DEVICES:-10000}
CONCURRENCY=${CONCURRENCY:-256}
TELEMETRY_DEVICES=${TELEMETRY_DEVICES:-1000}
TELEMETRY_DURATION=${TELEMETRY_DURATION:-30}
IN_FLIGHT=${IN_FLIGHT:-8}
FANOUT_DEVICES=${FANOUT_DEVICES:-1000}
IDLE_COUNTS=${IDLE_COUNTS:-10000 50000}
COLD_DEVICES=${COLD_DEVICES:-0}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results/$STAMP}

bench_require_uint REPEAT "$REPEAT"
bench_resolve_muster
command -v python3 >/dev/null 2>&1 || bench_die "python3 is required"
mkdir -p "$RESULTS_DIR"
RESULTS=$RESULTS_DIR/results.tsv
: >"$RESULTS"

# The environment of each benchmark (beyond REPEAT and MUSTER): sets the array `vars`.
bench_vars() {
    case $1 in
    provision-storm) vars=("DEVICES=$STORM_DEVICES" "CONCURRENCY=$CONCURRENCY") ;;
    telemetry) vars=("DEVICES=$TELEMETRY_DEVICES" "DURATION=$TELEMETRY_DURATION" "IN_FLIGHT=$IN_FLIGHT" "CONCURRENCY=$CONCURRENCY") ;;
    fanout) vars=("DEVICES=$FANOUT_DEVICES" "CONCURRENCY=$CONCURRENCY") ;;
    idle-memory) vars=("COUNTS=$IDLE_COUNTS" "CONCURRENCY=$CONCURRENCY") ;;
    amqp) vars=("DEVICES=$TELEMETRY_DEVICES" "DURATION=$TELEMETRY_DURATION" "IN_FLIGHT=$IN_FLIGHT" "CONCURRENCY=$CONCURRENCY") ;;
    routing) vars=("DEVICES=$TELEMETRY_DEVICES" "DURATION=$TELEMETRY_DURATION" "IN_FLIGHT=$IN_FLIGHT" "CONCURRENCY=$CONCURRENCY") ;;
    eventhubs) vars=("DEVICES=$TELEMETRY_DEVICES" "DURATION=$TELEMETRY_DURATION" "IN_FLIGHT=$IN_FLIGHT" "CONCURRENCY=$CONCURRENCY") ;;
    cold-start) vars=("COLD_DEVICES=$COLD_DEVICES") ;;
    bounded-memory) vars=("DEVICES=$TELEMETRY_DEVICES") ;;
    soak) vars=("DEVICES=${SOAK_DEVICES:-10000}" "MINUTES=${SOAK_MINUTES:-30}") ;;
    cluster) vars=() ;;
    *) bench_die "unknown benchmark '$1' (known: provision-storm telemetry amqp routing eventhubs fanout idle-memory bounded-memory cold-start soak cluster)" ;;
    esac
}

# VAR=VALUE words as a shell command line shows them (values with spaces in single quotes).
shown() {
    local w out=()
    for w in "$@"; do
        if [[ $w == *" "* ]]; then out+=("${w%%=*}='${w#*=}'"); else out+=("$w"); fi
    done
    echo "${out[*]}"
}

began=$SECONDS
commands=()
for name in $BENCHES; do
    vars=()
    bench_vars "$name"
    settings=$(shown "REPEAT=$REPEAT" "${vars[@]}")
    commands+=("$settings bench/$name.sh")
    echo
    bench_log "=== $name: $settings"
    rc=0
    env REPEAT="$REPEAT" MUSTER="$MUSTER" BENCH_RESULTS="$RESULTS" "${vars[@]}" \
        bash "$BENCH_DIR/$name.sh" 2>&1 | tee "$RESULTS_DIR/$name.txt" || rc=$?
    if ((rc != 0)); then
        bench_warn "$name exited with status $rc (output in $RESULTS_DIR/$name.txt)"
        printf 'failed\t%s\t%s\n' "$name" "$rc" >>"$RESULTS"
    fi
done
elapsed=$((SECONDS - began))
printf '%s\n' "${commands[@]}" >"$RESULTS_DIR/commands.txt"

mosq_bin=$(command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto)
mosq_help=$("$mosq_bin" -h 2>&1 || true)
mosq="not installed"
if [[ $mosq_help =~ version\ ([0-9][0-9.]*) ]]; then mosq=${BASH_REMATCH[1]}; fi
rev=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $rev != unknown ]] && ! git -C "$REPO_ROOT" diff --quiet HEAD -- 2>/dev/null; then
    rev="$rev with uncommitted changes"
fi
mem_kib=0
while read -r key value _; do
    if [[ $key == MemTotal: ]]; then mem_kib=$value; fi
done </proc/meminfo
tmp=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}

META_DATE=$(date -u +%Y-%m-%d) \
    META_MACHINE="$(bench_machine) ($(uname -m)), $(printf '%.1f' "$(bench_calc "$mem_kib / 1048576")") GiB RAM" \
    META_MUSTER="$("$MUSTER" --version 2>/dev/null || echo muster) ($rev)" \
    META_MOSQUITTO="$mosq" \
    META_DATA="$tmp ($(stat -f -c %T "$tmp" 2>/dev/null || echo unknown))" \
    META_ELAPSED="$((elapsed / 60)) min $((elapsed % 60)) s" \
    python3 - "$RESULTS" "$RESULTS_DIR/commands.txt" "$RESULTS_DIR/summary.md" <<'EOF'
import os, sys
results, commands_file, summary = sys.argv[1:4]
env = os.environ
rows, notes, failed = [], [], []
for line in open(results, encoding="utf-8"):
    f = line.rstrip("\n").split("\t")
    if f[0] == "figure" and len(f) == 10:
        rows.append(f[1:])
    elif f[0] == "note" and len(f) == 3:
        notes.append((f[1], f[2]))
    elif f[0] == "failed" and len(f) == 3:
        failed.append((f[1], f[2]))
commands = [c for c in open(commands_file, encoding="utf-8").read().splitlines() if c]
out = [
    f"## Results, {env['META_DATE']}",
    "",
    f"- Machine: {env['META_MACHINE']}",
    f"- Software: {env['META_MUSTER']}; Mosquitto {env['META_MOSQUITTO']}",
    f"- Data directories in {env['META_DATA']}",
    f"- Each figure is the median of its runs, with the smallest and the largest; {env['META_ELAPSED']} in all",
    "",
    "| Benchmark | Figure | Median | Min – max | Runs | Goal | Met |",
    "|---|---|--:|--:|--:|---|:-:|",
]
verdict = {"yes": "yes", "no": "**no**", "n/a": "n/a", "": ""}
for section, name, med, lo, hi, n, unit, goal, met in rows:
    spread = f"{lo} – {hi}" if n not in ("0", "1") else ""
    out.append(f"| {section} | {name.strip()} | {med} {unit} | {spread} | {n} | {goal} | {verdict.get(met, met)} |")
for section, rc in failed:
    why = "skipped: Mosquitto is not installed" if section == "telemetry" and rc == "2" else f"did not finish (exit status {rc})"
    out.append(f"| {section} | {why} | | | | | |")
if notes:
    out += ["", "Notes:"]
    out += [f"- {section}: {text}" for section, text in notes]
out += ["", "Commands (from the repository root, after `cargo build --release`):", "", "```sh"]
out += commands
out += ["```"]
text = "\n".join(out) + "\n"
with open(summary, "w", encoding="utf-8") as f:
    f.write(text)
print()
print(text, end="")
EOF
bench_log "full output and summary.md in $RESULTS_DIR"
