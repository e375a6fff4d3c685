#!/usr/bin/env bash
# Bounded memory whatever consumers do: server RSS stays flat while
#   1. DEVICES devices publish as fast as acknowledgements allow, and event-stream readers
#      stall (STALLED readers that read nothing) or crawl (one reader at SLOW_RATE events/s):
#      the durable log is the buffer, not memory;
#   2. DEVICES connected devices never answer the direct methods called on them
#      (METHOD_CONCURRENCY calls in flight, 5 s timeout each), while cloud-to-device messages
#      are sent as fast as the API takes them to DEVICES devices that are offline (each
#      queue holds at most 50, in the store).
#
#   DEVICES=1000 SECONDS_PER_PHASE=60 bench/bounded-memory.sh
#
# For each phase: server RSS sampled every second; the figure is the largest RSS in the
# phase's last three quarters against the RSS a quarter of the way in (after the connect storm
# and warm-up). Goal: within 10%.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-1000}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-60}
STALLED=${STALLED:-4}
SLOW_RATE=${SLOW_RATE:-100}
METHOD_CONCURRENCY=${METHOD_CONCURRENCY:-64}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
REPEAT=1
bench_require_uint DEVICES "$DEVICES"
bench_require_uint SECONDS_PER_PHASE "$SECONDS_PER_PHASE"

bench_setup bounded-memory
bench_raise_nofile
bench_header "bounded memory" "DEVICES=$DEVICES SECONDS_PER_PHASE=$SECONDS_PER_PHASE STALLED=$STALLED SLOW_RATE=$SLOW_RATE/s METHOD_CONCURRENCY=$METHOD_CONCURRENCY"

DATA=$WORK/data
CERTS=$WORK/certs
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
bench_log "muster serve: pid $SERVER_PID, MQTT port $MQTT_PORT, ID scope $SCOPE"

# sample_rss FILE: the server's RSS in KiB once a second until the file .stop appears.
sample_rss() {
    local out=$1 t=0
    : >"$out"
    while [[ ! -e $out.stop ]]; do
        printf '%s\t%s\n' "$t" "$(bench_rss_kib "$SERVER_PID" || echo 0)" >>"$out"
        sleep 1
        t=$((t + 1))
    done
}

# phase NAME FLEET_ARGS... : runs the fleet with the given arguments while $LOADS (commands)
# run in the background, sampling RSS.
fleet_args=(--devices "$DEVICES" --concurrency 256 --ca-cert "$CERTS/root-ca.pem"
    --ca-key "$CERTS/root-ca.key.pem" --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE"
    --trust "$DATA/tls/ca.pem" --source-addresses "$SOURCE_ADDRESSES" --data-dir "$DATA")

# Phase 1: stalled and slow event-stream readers under full-speed telemetry.
bench_log "phase 1: $DEVICES devices at full speed for ${SECONDS_PER_PHASE}s; $STALLED stalled readers and one at $SLOW_RATE events/s"
sample_rss "$WORK/rss-1.tsv" &
SAMPLER=$!
python3 "$BENCH_DIR/service_load.py" "$DATA" stall-stream "$((SECONDS_PER_PHASE + 30))" "$STALLED" >"$WORK/stall.json" 2>"$WORK/stall.err" &
STALL=$!
bench_track_pid "$STALL"
python3 "$BENCH_DIR/service_load.py" "$DATA" slow-stream "$((SECONDS_PER_PHASE + 30))" "$SLOW_RATE" >"$WORK/slow.json" 2>"$WORK/slow.err" &
SLOW=$!
bench_track_pid "$SLOW"
bench_fleet "$WORK/fleet-1.json" "${fleet_args[@]}" --prefix bm1- \
    --duration "${SECONDS_PER_PHASE}s" --telemetry-interval 0s --in-flight 8
touch "$WORK/rss-1.tsv.stop"
wait "$SAMPLER" || true
bench_stop_pid "$STALL" 5
bench_stop_pid "$SLOW" 5
acked_1=$(bench_get "$WORK/fleet-1.json" messagesAcked)

# Phase 2: methods nobody answers, and C2D to devices that are away (phase 1's, now offline).
bench_log "phase 2: $DEVICES idle devices that never answer $METHOD_CONCURRENCY method calls in flight; C2D to $DEVICES offline devices"
sample_rss "$WORK/rss-2.tsv" &
SAMPLER=$!
(sleep 20 && exec python3 "$BENCH_DIR/service_load.py" "$DATA" methods "$((SECONDS_PER_PHASE - 25))" bm2- "$DEVICES" "$METHOD_CONCURRENCY") >"$WORK/methods.json" 2>"$WORK/methods.err" &
METHODS=$!
bench_track_pid "$METHODS"
(sleep 20 && exec python3 "$BENCH_DIR/service_load.py" "$DATA" c2d "$((SECONDS_PER_PHASE - 25))" bm1- "$DEVICES") >"$WORK/c2d.json" 2>"$WORK/c2d.err" &
C2D=$!
bench_track_pid "$C2D"
bench_fleet "$WORK/fleet-2.json" "${fleet_args[@]}" --prefix bm2- \
    --duration "${SECONDS_PER_PHASE}s" --telemetry-interval 3600s
wait "$METHODS" || true
bench_untrack_pid "$METHODS"
wait "$C2D" || true
bench_untrack_pid "$C2D"
touch "$WORK/rss-2.tsv.stop"
wait "$SAMPLER" || true

python3 - "$WORK" "$acked_1" "${BENCH_RESULTS:-}" <<'PY'
import json, sys
work, acked, results = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def load(name):
    try:
        return json.loads(open(f"{work}/{name}").read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}

def growth(path):
    rows = [tuple(int(x) for x in l.split("\t")) for l in open(path) if l.strip()]
    rows = [r for r in rows if r[1] > 0]
    if len(rows) < 8:
        return None
    start = len(rows) // 4
    base = rows[start][1]
    peak = max(r for _, r in rows[start:])
    return base, peak, (peak - base) / base * 100

def figure(name, value, unit, goal="", verdict=""):
    print(f"  {name:<52} {value:>14} {unit}" + (f"   goal {goal}: {'met' if verdict == 'yes' else 'NOT met'}" if goal else ""))
    if results:
        with open(results, "a", encoding="utf-8") as f:
            f.write("\t".join(["figure", "bounded-memory", name, str(value), str(value), str(value), "1", unit, goal, verdict]) + "\n")

ok = True
print()
print("Results:")
slow = load("slow.json")
figure("phase 1: messages acknowledged while readers stall", f"{acked:,}", "")
figure("phase 1: events the slow reader took", f"{slow.get('eventsRead', 0):,}", "")
g = growth(f"{work}/rss-1.tsv")
if g:
    base, peak, pct = g
    figure("phase 1: server RSS after warm-up / peak", f"{base / 1024:.1f} / {peak / 1024:.1f}", "MiB")
    figure("phase 1: RSS growth, stalled and slow readers", f"{pct:.1f}", "%", "≤ 10%", "yes" if pct <= 10 else "no")
    ok &= pct <= 10
methods = load("methods.json").get("answers", {})
c2d = load("c2d.json").get("answers", {})
figure("phase 2: method calls answered (status: count)", json.dumps(methods), "")
figure("phase 2: C2D sends answered (status: count)", json.dumps(c2d), "")
g = growth(f"{work}/rss-2.tsv")
if g:
    base, peak, pct = g
    figure("phase 2: server RSS after warm-up / peak", f"{base / 1024:.1f} / {peak / 1024:.1f}", "MiB")
    figure("phase 2: RSS growth, unanswered methods and full C2D queues", f"{pct:.1f}", "%", "≤ 10%", "yes" if pct <= 10 else "no")
    ok &= pct <= 10
sys.exit(0 if ok else 1)
PY
