#!/usr/bin/env bash
# Soak: a fleet lives on one server for a long time, and the server must stay flat.
#
#   bench/soak.sh                                     # 10,000 devices for 30 minutes
#   DEVICES=500 MINUTES=2 WARMUP=30 bench/soak.sh     # the short soak CI runs
#
# Every device provisions (X.509), connects and sends one message every INTERVAL; meanwhile
# the fleet's service side makes SERVICE_OPS calls a second on random devices (desired patch,
# cloud-to-device message, direct method, in turn), each device answers its methods, echoes
# desired patches into reported properties and takes its messages, and CHURN percent of the
# devices disconnect and connect again every minute (`muster device fleet --soak`).
#
# Pass criteria, checked at the end (the script exits 1 when one fails):
#   - server RSS, sampled every SAMPLE seconds, stays within ±RSS_TOLERANCE % of its value at
#     the end of the warm-up (WARMUP seconds after the whole fleet is connected);
#   - 0 errors: no failed registration, connection, message, service call or reconnect;
#   - every acknowledged message is readable from the event stream (bench/soak_check.py reads
#     it and checks each device's ledger).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-10000}
MINUTES=${MINUTES:-30}
INTERVAL=${INTERVAL:-10s}
SERVICE_OPS=${SERVICE_OPS:-20}
CHURN=${CHURN:-1}
WARMUP=${WARMUP:-300}
SAMPLE=${SAMPLE:-10}
RSS_TOLERANCE=${RSS_TOLERANCE:-10}
CONCURRENCY=${CONCURRENCY:-256}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
REPEAT=1
bench_require_uint DEVICES "$DEVICES"
bench_require_uint MINUTES "$MINUTES"
bench_require_uint WARMUP "$WARMUP"
bench_require_uint SAMPLE "$SAMPLE"

bench_setup soak
bench_raise_nofile
bench_header "soak" "DEVICES=$DEVICES MINUTES=$MINUTES INTERVAL=$INTERVAL SERVICE_OPS=$SERVICE_OPS/s CHURN=$CHURN%/min WARMUP=${WARMUP}s RSS_TOLERANCE=$RSS_TOLERANCE%"

DATA=$WORK/data
CERTS=$WORK/certs
METRICS_PORT=$(bench_free_port)
METRICS_URL=http://127.0.0.1:$METRICS_PORT/metrics
BENCH_SERVE_ARGS=(--metrics-bind "127.0.0.1:$METRICS_PORT")
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
RUN=soak-$(date +%s)
bench_log "muster serve: pid $SERVER_PID, MQTT port $MQTT_PORT, metrics $METRICS_URL, ID scope $SCOPE, run $RUN"

# The fleet in the background; RSS and connected devices sampled meanwhile.
"$MUSTER" device fleet --devices "$DEVICES" --concurrency "$CONCURRENCY" --prefix soak- \
    --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" \
    --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" --trust "$DATA/tls/ca.pem" \
    --source-addresses "$SOURCE_ADDRESSES" --data-dir "$DATA" \
    --duration "${MINUTES}m" --telemetry-interval "$INTERVAL" --lab-payload \
    --soak --service-ops-per-sec "$SERVICE_OPS" --churn-per-minute "$CHURN" \
    --soak-ledger "$WORK/ledger.jsonl" --soak-run "$RUN" --metrics-url "$METRICS_URL" \
    --json >"$WORK/fleet.json" 2>"$WORK/fleet.err" &
FLEET_PID=$!
bench_track_pid "$FLEET_PID"

samples=$WORK/rss.tsv
: >"$samples"
t0=$SECONDS
while kill -0 "$FLEET_PID" 2>/dev/null; do
    rss=$(bench_rss_kib "$SERVER_PID" || echo 0)
    connected=$(python3 - "$METRICS_URL" <<'PY' || echo 0
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print(next((int(float(l.split()[-1])) for l in text.splitlines() if l.startswith("muster_devices_connected ")), 0))
PY
)
    printf '%s\t%s\t%s\n' "$((SECONDS - t0))" "$rss" "$connected" >>"$samples"
    sleep "$SAMPLE"
done
rc=0
wait "$FLEET_PID" || rc=$?
bench_untrack_pid "$FLEET_PID"
((rc == 0)) || {
    tail -n 20 "$WORK/fleet.err" >&2
    bench_die "the fleet failed (exit $rc)"
}
bench_fleet_check "$WORK/fleet.json"

bench_log "reading the event stream back against the ledger"
check=$(python3 "$BENCH_DIR/soak_check.py" "$DATA" "$WORK/ledger.jsonl" "$RUN") || true
echo "$check" >"$WORK/readback.json"

python3 - "$samples" "$WORK/fleet.json" "$WORK/readback.json" "$DEVICES" "$WARMUP" "$RSS_TOLERANCE" "${BENCH_RESULTS:-}" <<'PY'
import json, os, statistics, sys
samples_path, fleet_path, readback_path, devices, warmup, tolerance, results = sys.argv[1:8]
devices, warmup, tolerance = int(devices), int(warmup), float(tolerance)
samples = [tuple(int(x) for x in l.split("\t")) for l in open(samples_path) if l.strip()]
fleet = None
for line in open(fleet_path):
    if line.strip().startswith("{"):
        fleet = json.loads(line)
readback = json.loads(open(readback_path).read().strip() or "{}")

# The soak starts when (almost) the whole fleet is connected; the baseline is the first sample
# after the warm-up that follows.
start = next((t for t, _, c in samples if c >= 0.99 * devices), None)
failures = []
if start is None:
    failures.append("the fleet never had 99% of its devices connected")
    steady = []
else:
    steady = [(t, r) for t, r, _ in samples if t >= start + warmup]
if len(steady) < 3:
    failures.append(f"only {len(steady)} RSS samples after the warm-up: run longer or warm up less")
    base = worst = lo = hi = 0
else:
    base = steady[0][1]
    lo = min(r for _, r in steady)
    hi = max(r for _, r in steady)
    worst = max(abs(r - base) for _, r in steady) / base * 100
    if worst > tolerance:
        failures.append(f"RSS moved {worst:.1f}% from {base} KiB after the warm-up (limit {tolerance}%)")

soak = fleet.get("soak", {}) if fleet else {}
error_keys = ["provisionFailed", "connectFailed", "publishFailed"]
soak_error_keys = ["reconnectFailed", "twinPatchFailed", "reportedFailed", "c2dFailed", "methodsFailed"]
errors = sum(fleet.get(k, 0) for k in error_keys) + sum(soak.get(k, 0) for k in soak_error_keys) if fleet else 1
if errors:
    failures.append(f"{errors} errors: " + json.dumps(fleet.get("errors", [])[:5] if fleet else "no fleet summary"))
if readback.get("missing", 1) != 0:
    failures.append(f"acknowledged messages not readable: {readback}")

def figure(name, value, unit, goal="", verdict=""):
    print(f"  {name:<46} {value:>14} {unit}" + (f"   goal {goal}: {'met' if verdict == 'yes' else 'NOT met'}" if goal else ""))
    if results:
        with open(results, "a", encoding="utf-8") as f:
            f.write("\t".join(["figure", "soak", name, str(value), str(value), str(value), "1", unit, goal, verdict]) + "\n")

print()
print("Results:")
if fleet:
    figure("devices connected", fleet["connected"], "")
    figure("messages acknowledged", f"{fleet['messagesAcked']:,}", "")
    figure("acknowledged messages read back", f"{readback.get('found', 0):,} of {readback.get('expected', 0):,}", "",
           "all", "yes" if readback.get("missing", 1) == 0 else "no")
    figure("reconnects (churn)", soak.get("reconnects", 0), "")
    figure("twin patches / C2D / methods answered", f"{soak.get('twinPatches', 0)} / {soak.get('c2dSent', 0)} / {soak.get('methodsAnswered', 0)}", "")
    figure("method latency p99", soak.get("methodLatencyMs", {}).get("p99", 0), "ms")
    figure("publish latency p99", fleet["publishLatencyMs"]["p99"], "ms")
figure("errors", errors, "", "0", "yes" if errors == 0 else "no")
if steady:
    figure("server RSS after warm-up (first / min / max)", f"{base / 1024:.1f} / {lo / 1024:.1f} / {hi / 1024:.1f}", "MiB")
    figure("largest RSS change after warm-up", f"{worst:.1f}", "%", f"within ±{tolerance:g}%", "yes" if worst <= tolerance else "no")
    figure("server RSS per device after warm-up", f"{base / devices:.1f}", "KiB")
server = (fleet or {}).get("serverMetrics", {})
if server:
    figure("server: events per group commit", server.get("eventsPerCommit", 0), "")
    figure("server: group commit mean", server.get("commitMs", 0), "ms")
for f in failures:
    print(f"  FAILED: {f}")
print("  verdict: " + ("pass" if not failures else "FAIL"))
sys.exit(1 if failures else 0)
PY
