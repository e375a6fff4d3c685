# shellcheck shell=bash
# Common helpers for the muster benchmarks (bench/*.sh). Sourced, never run.
#
# Conventions: figures go to stdout, progress and warnings to stderr. When BENCH_RESULTS names
# a file, every figure is also appended to it as one tab-separated record (run-all.sh turns the
# records into a markdown table). JSON is read with python3, never jq.

set -euo pipefail
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
REPEAT=${REPEAT:-3}
BENCH_PIDS=()
# Extra `muster serve` flags for bench_start_server.
BENCH_SERVE_ARGS=()
WORK=
BENCH_SECTION=bench

bench_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bench_warn() { bench_log "WARNING: $*"; }
bench_die() {
    bench_log "error: $*"
    exit 1
}

# bench_require_uint NAME VALUE: VALUE must be a positive integer.
bench_require_uint() {
    if ! [[ $2 =~ ^[0-9]+$ ]] || (($((10#$2)) == 0)); then
        bench_die "$1 must be a positive integer (got '$2')"
    fi
}

# MUSTER: default target/release/muster, relative to the current directory or else to the
# repository root; a bare name is looked up in PATH.
bench_resolve_muster() {
    local m=${MUSTER:-target/release/muster}
    if [[ $m != */* ]]; then
        m=$(command -v "$m" || true)
    elif [[ $m != /* ]]; then
        if [[ -e $m ]]; then
            m=$PWD/$m
        elif [[ -e $REPO_ROOT/$m ]]; then
            m=$REPO_ROOT/$m
        fi
    fi
    [[ -n $m && -x $m ]] || bench_die "no muster binary at '${MUSTER:-target/release/muster}': run 'cargo build --release' in $REPO_ROOT, or set MUSTER=/path/to/muster"
    if ! "$m" bench --help >/dev/null 2>&1 || ! "$m" device fleet --help >/dev/null 2>&1; then
        bench_die "$m has no 'bench' or 'device fleet' command: rebuild it from this checkout (cargo build --release)"
    fi
    MUSTER=$m
    export MUSTER
}

# bench_setup NAME: checks, a work directory removed on exit, and the process cleanup trap.
bench_setup() {
    BENCH_SECTION=$1
    bench_require_uint REPEAT "$REPEAT"
    command -v python3 >/dev/null 2>&1 || bench_die "python3 is required (it reads the JSON the tools print)"
    bench_resolve_muster
    local root=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}
    WORK=$(mktemp -d "$root/muster-bench-$1.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    BENCH_FS=$(stat -f -c %T "$WORK" 2>/dev/null || echo unknown)
    case $BENCH_FS in
    tmpfs | ramfs | overlayfs-tmpfs)
        bench_warn "$WORK is on $BENCH_FS: fsync costs nothing there, so muster's durable writes look cheaper than on a disk. Set BENCH_TMPDIR to a directory on a real disk."
        ;;
    esac
}

# Stop everything still running, print the logs' tails on failure, remove the work directory
# (kept with KEEP_WORK=1).
bench_cleanup() {
    local rc=$? pid f
    trap - EXIT INT TERM
    for pid in ${BENCH_PIDS[@]+"${BENCH_PIDS[@]}"}; do
        bench_stop_pid "$pid" 10
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if ((rc != 0)); then
            for f in "$WORK"/*.log "$WORK"/*.err; do
                [[ -s $f ]] || continue
                bench_log "last lines of $f:"
                tail -n 15 "$f" >&2 || true
            done
        fi
        if [[ ${KEEP_WORK:-0} == 1 ]]; then
            bench_log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# bench_stop_pid PID [SECONDS]: SIGTERM, wait, SIGKILL after SECONDS (default 15).
bench_stop_pid() {
    local pid=$1 limit=${2:-15} i
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < limit * 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            bench_warn "process $pid did not stop within ${limit}s of SIGTERM: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    bench_untrack_pid "$pid"
}

# Processes the cleanup stops: track what the script starts, untrack what it has reaped.
bench_track_pid() { BENCH_PIDS+=("$1"); }
bench_untrack_pid() {
    local i keep=()
    for i in ${BENCH_PIDS[@]+"${BENCH_PIDS[@]}"}; do
        [[ $i == "$1" ]] || keep+=("$i")
    done
    BENCH_PIDS=(${keep[@]+"${keep[@]}"})
}

# Raise the open-file limit for this shell and what it starts (servers, fleets, brokers).
bench_raise_nofile() {
    ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# A TCP port free on 127.0.0.1 right now.
bench_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# bench_wait_tcp HOST PORT SECONDS: until the port accepts a connection.
bench_wait_tcp() {
    python3 - "$@" <<'EOF'
import socket, sys, time
host, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + limit
while True:
    try:
        socket.create_connection((host, port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > end:
            sys.exit(f"{host}:{port} does not accept connections after {limit:g} s")
        time.sleep(0.02)
EOF
}

# bench_rss_kib PID: resident set size in KiB (VmRSS).
bench_rss_kib() {
    local key value _
    while read -r key value _; do
        if [[ $key == VmRSS: ]]; then
            echo "$value"
            return 0
        fi
    done <"/proc/$1/status"
    return 1
}

# bench_get FILE KEY...: values of dotted keys (provisionLatencyMs.p99) of the JSON document in
# FILE, or of the last line of FILE that is a JSON object; tab-separated.
bench_get() {
    python3 - "$@" <<'EOF'
import json, sys
path = sys.argv[1]
with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
try:
    doc = json.loads(text)
except ValueError:
    doc = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                pass
if not isinstance(doc, (dict, list)):
    sys.exit(f"no JSON object in {path}")
out = []
for key in sys.argv[2:]:
    v = doc
    for part in key.split("."):
        if isinstance(v, list) and part.isdigit() and int(part) < len(v):
            v = v[int(part)]
        elif isinstance(v, dict) and part in v:
            v = v[part]
        else:
            sys.exit(f"{path}: no '{key}'")
    out.append(v if isinstance(v, str) else json.dumps(v))
print("\t".join(out))
EOF
}

# bench_calc EXPR: evaluate an arithmetic expression (python floats); nan when it cannot be
# computed (a division by zero, a missing figure).
bench_calc() {
    python3 -c '
import math, sys
try:
    v = float(eval(sys.argv[1], {"__builtins__": {}}, {"nan": math.nan}))
except (ZeroDivisionError, ValueError, TypeError, SyntaxError, NameError):
    v = math.nan
print("nan" if not math.isfinite(v) else repr(v))' "$1"
}

# bench_round VALUE [DECIMALS]: for log lines (nan stays nan).
bench_round() { printf "%.${2:-0}f" "$1"; }

# bench_figure NAME UNIT DECIMALS OP THRESHOLD GOAL_TEXT VALUE...
# Print the median of VALUEs with min and max, and the verdict against the goal (OP: >=, <=
# or empty for none); append the record to BENCH_RESULTS.
bench_figure() {
    python3 - "$BENCH_SECTION" "$@" <<'EOF'
import math, os, statistics, sys
section, name, unit, dec, op, thr, goal, *raw = sys.argv[1:]
vals = []
for v in raw:
    try:
        x = float(v)
    except ValueError:
        continue
    if math.isfinite(x):
        vals.append(x)
dec = int(dec)
fmt = lambda x: f"{x:,.{dec}f}"
if vals:
    med = statistics.median(vals)
    med_s, lo_s, hi_s = fmt(med), fmt(min(vals)), fmt(max(vals))
else:
    med, med_s, lo_s, hi_s = None, "n/a", "n/a", "n/a"
verdict = ""
if op:
    if med is None:
        verdict = "n/a"
    else:
        t = float(thr)
        verdict = "yes" if (med >= t if op == ">=" else med <= t) else "no"
line = f"  {name:<46} {med_s:>12} {unit}"
if len(vals) > 1:
    line += f"   (min {lo_s}, max {hi_s}; {len(vals)} runs)"
if len(vals) < len(raw):
    line += f"   [{len(raw) - len(vals)} run(s) without a figure]"
if goal:
    line += f"   goal {goal}: " + {"yes": "met", "no": "NOT met", "n/a": "n/a"}[verdict]
print(line, flush=True)
path = os.environ.get("BENCH_RESULTS")
if path:
    with open(path, "a", encoding="utf-8") as f:
        f.write("\t".join(["figure", section, name, med_s, lo_s, hi_s, str(len(vals)), unit, goal, verdict]) + "\n")
EOF
}

# bench_note TEXT: a line under the figures (also recorded for run-all.sh).
bench_note() {
    echo "  note: $*"
    if [[ -n ${BENCH_RESULTS:-} ]]; then
        printf 'note\t%s\t%s\n' "$BENCH_SECTION" "$*" >>"$BENCH_RESULTS"
    fi
}

# The machine, in one line.
bench_machine() {
    local cpu
    cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
    [[ -n $cpu ]] || cpu=$(uname -m)
    printf '%s CPUs (nproc) %s, Linux %s' "$(nproc)" "$cpu" "$(uname -r)"
}

# bench_header TITLE KEY=VALUE...: what is measured, with which sizes, where.
bench_header() {
    local title=$1
    shift
    echo "== $title =="
    echo "  muster      $("$MUSTER" --version 2>/dev/null || echo '?') ($MUSTER)"
    echo "  machine     $(bench_machine)"
    echo "  work dir    $WORK ($BENCH_FS)"
    echo "  settings    REPEAT=$REPEAT $*"
}

# bench_start_server DATA_DIR LOG: start `muster serve` on free ports; sets SERVER_PID,
# MQTT_PORT, HTTPS_PORT once endpoint.json is written and the MQTT port accepts connections.
bench_start_server() {
    local data=$1 log=$2 deadline ports
    mkdir -p "$data"
    rm -f "$data/endpoint.json"
    MUSTER_LOG=${MUSTER_LOG:-warn} RUST_LOG=${RUST_LOG:-warn} \
        "$MUSTER" serve --data-dir "$data" --mqtt-port 0 --amqp-port 0 --https-port 0 --portal-port 0 \
        ${BENCH_SERVE_ARGS[@]+"${BENCH_SERVE_ARGS[@]}"} >>"$log" 2>&1 &
    SERVER_PID=$!
    bench_track_pid "$SERVER_PID"
    deadline=$((SECONDS + 60))
    while :; do
        if [[ -s $data/endpoint.json ]] && ports=$(bench_get "$data/endpoint.json" mqttPort httpsPort 2>/dev/null); then
            break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || bench_die "muster serve exited during start; see $log"
        ((SECONDS < deadline)) || bench_die "muster serve did not write $data/endpoint.json within 60 s"
        sleep 0.05
    done
    # shellcheck disable=SC2034 # HTTPS_PORT: for the scripts
    IFS=$'\t' read -r MQTT_PORT HTTPS_PORT <<<"$ports"
    # shellcheck disable=SC2034 # AMQP_PORT: for the scripts
    AMQP_PORT=$(bench_get "$data/endpoint.json" amqpPort 2>/dev/null || echo 0)
    bench_wait_tcp 127.0.0.1 "$MQTT_PORT" 30
}

# bench_cpu_seconds PID: user + system CPU seconds the process has used so far.
bench_cpu_seconds() {
    local ticks
    ticks=$(awk '{print $14 + $15}' "/proc/$1/stat")
    bench_calc "$ticks / $(getconf CLK_TCK)"
}

bench_stop_server() {
    if [[ -n ${SERVER_PID:-} ]]; then
        bench_stop_pid "$SERVER_PID" 30
        SERVER_PID=
    fi
}

# bench_id_scope DATA_DIR
bench_id_scope() {
    local info
    info=$("$MUSTER" info --data-dir "$1" --json)
    python3 -c 'import json, sys; print(json.loads(sys.argv[1])["idScope"])' "$info"
}

# bench_certs DIR: a root and an intermediate CA (the fleet mints device leaves from the root).
bench_certs() {
    "$MUSTER" certs create-root-and-intermediate --dir "$1" >/dev/null
}

# bench_enroll DATA_DIR CERT_DIR: upload the root as verified and make the enrollment group
# "bench" that trusts it (the server must be running).
bench_enroll() {
    "$MUSTER" dps --data-dir "$1" certificate create --name bench-root --path "$2/root-ca.pem" --verified >/dev/null
    "$MUSTER" dps --data-dir "$1" enrollment-group create --enrollment-id bench --ca-name bench-root >/dev/null
}

# bench_fleet OUT ARGS...: `muster device fleet ARGS --json`, the summary line in OUT, stderr in
# OUT's .err sibling; warns about failed devices and messages.
bench_fleet() {
    local out=$1 rc=0 pid
    shift
    # In the background, so a signal to this script stops the fleet at once (the trap runs
    # during `wait`, not after a foreground command ends).
    "$MUSTER" device fleet "$@" --json >"$out" 2>"${out%.json}.err" &
    pid=$!
    bench_track_pid "$pid"
    wait "$pid" || rc=$?
    bench_untrack_pid "$pid"
    if ((rc != 0)); then
        bench_log "muster device fleet failed (exit $rc):"
        tail -n 20 "${out%.json}.err" >&2 || true
        return "$rc"
    fi
    bench_fleet_check "$out"
}

# bench_fleet_check OUT: warn about failures the fleet counted (they do not fail the run).
bench_fleet_check() {
    python3 - "$1" >&2 <<'EOF'
import json, sys
doc = None
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            pass
if doc is None:
    sys.exit(f"no fleet summary in {sys.argv[1]}")
failed = {k: doc.get(k, 0) for k in ("provisionFailed", "connectFailed", "publishFailed") if doc.get(k, 0)}
if failed:
    print("WARNING: fleet failures: " + ", ".join(f"{k} {v}" for k, v in failed.items()))
for e in doc.get("errors", [])[:5]:
    print(f"WARNING: fleet error ({e.get('phase')}, {e.get('count')}x): {e.get('message')}")
EOF
}
