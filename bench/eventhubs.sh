#!/usr/bin/env bash
# Does one Event Hubs consumer keep up with the devices? DEVICES devices send the lab's
# readings (one per device per INTERVAL, then as fast as acknowledgements allow) while one
# official @azure/event-hubs consumer reads every partition of the built-in endpoint; once a
# second the consumer compares what it received with what the partitions hold. Lag = events
# stored but not yet received.
#
#   DEVICES=1000 DURATION=30 INTERVAL=1 REPEAT=1 bench/eventhubs.sh
#
# Needs Node.js and the SDKs of tests/sdk/node (installed by tests/sdk/node/setup.sh).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-1000}
DURATION=${DURATION:-30}
INTERVAL=${INTERVAL:-1}
IN_FLIGHT=${IN_FLIGHT:-8}
CONCURRENCY=${CONCURRENCY:-256}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
for v in DEVICES DURATION INTERVAL IN_FLIGHT CONCURRENCY SOURCE_ADDRESSES; do
    bench_require_uint "$v" "${!v}"
done
command -v node >/dev/null 2>&1 || bench_die "node is required (the Event Hubs consumer is the JS SDK)"
NODE_DIR=$(bash "$REPO_ROOT/tests/sdk/node/setup.sh" | tail -n 1)

bench_setup eventhubs
bench_raise_nofile
bench_header "One Event Hubs consumer against $DEVICES devices" \
    "DEVICES=$DEVICES DURATION=$DURATION INTERVAL=$INTERVAL IN_FLIGHT=$IN_FLIGHT"

DATA=$WORK/data
CERTS=$WORK/certs
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
CS=$("$MUSTER" info --data-dir "$DATA" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["eventHubsConnectionString"])')
tls=(--ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" --trust "$DATA/tls/ca.pem"
    --identity-dir "$WORK/identities")
bench_log "provisioning the $DEVICES devices once (prefix eh-)"
bench_fleet "$WORK/provision.json" "${tls[@]}" --devices "$DEVICES" --concurrency "$CONCURRENCY" \
    --prefix eh- --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" \
    --duration 0s --source-addresses "$SOURCE_ADDRESSES"

# run NAME FLEET-ARGS...: the fleet for DURATION s while the consumer measures.
run() {
    local name=$1 pid
    shift
    NODE_EXTRA_CA_CERTS=$DATA/tls/ca.pem node "$NODE_DIR/eventhub_lag.js" --connection-string "$CS" \
        --seconds $((DURATION + 5)) --drain 10 >"$WORK/$name.consumer.json" 2>"$WORK/$name.consumer.err" &
    pid=$!
    bench_track_pid "$pid"
    sleep 3
    bench_fleet "$WORK/$name.json" "${tls[@]}" --devices "$DEVICES" --concurrency "$CONCURRENCY" \
        --prefix eh- --no-provision --hub-host localhost --hub-port "$MQTT_PORT" \
        --duration "${DURATION}s" --qos 1 --lab-payload --source-addresses "$SOURCE_ADDRESSES" "$@"
    wait "$pid" || bench_warn "the consumer failed: $(tail -n 3 "$WORK/$name.consumer.err")"
    bench_untrack_pid "$pid"
}

paced_rate=() paced_lag=() paced_final=() fast_in=() fast_out=() fast_lag=() fast_drain=()
for ((r = 1; r <= REPEAT; r++)); do
    bench_log "run $r/$REPEAT: one message per device every ${INTERVAL}s"
    run "paced-$r" --telemetry-interval "${INTERVAL}s"
    IFS=$'\t' read -r rate maxlag final <<<"$(bench_get "$WORK/paced-$r.consumer.json" ratePerSec maxLag finalLag)"
    paced_rate+=("$rate") paced_lag+=("$maxlag") paced_final+=("$final")

    bench_log "run $r/$REPEAT: as fast as acknowledgements allow ($IN_FLIGHT in flight per device)"
    run "fast-$r" --telemetry-interval 0s --in-flight "$IN_FLIGHT"
    IFS=$'\t' read -r rate maxlag drain <<<"$(bench_get "$WORK/fast-$r.consumer.json" ratePerSec maxLag drainMs)"
    fast_in+=("$(bench_get "$WORK/fast-$r.json" messagesPerSec)") fast_out+=("$rate")
    fast_lag+=("$maxlag") fast_drain+=("$drain")
done

# The consumer alone, with the cores to itself: the backlog the runs left, from the start.
backlog=$(python3 - "$WORK" <<'PY'
import glob, json, sys
total = 0
for f in glob.glob(sys.argv[1] + "/*.json"):
    if f.endswith(".consumer.json") or f.endswith("provision.json"):
        continue
    for line in open(f):
        line = line.strip()
        if line.startswith("{"):
            total += json.loads(line).get("messagesAcked", 0)
print(total)
PY
)
c0=$(bench_cpu_seconds "$SERVER_PID")
bench_log "one consumer alone reads the $backlog events the runs stored, from the start"
NODE_EXTRA_CA_CERTS=$DATA/tls/ca.pem node "$NODE_DIR/eventhub_count.js" --connection-string "$CS" \
    --count "$backlog" >"$WORK/backlog.json" 2>"$WORK/backlog.err" || bench_warn "the backlog read failed"
c1=$(bench_cpu_seconds "$SERVER_PID")
alone=$(bench_get "$WORK/backlog.json" ratePerSec)
per_event=$(bench_calc "($c1 - $c0) / $backlog * 1000000")

echo
echo "Results ($REPEAT runs; median, min and max):"
bench_figure "paced: events received by the consumer" "events/s" 0 "" "" "" "${paced_rate[@]}"
bench_figure "paced: largest lag seen (sampled each second)" "events" 0 "" "" "" "${paced_lag[@]}"
bench_figure "paced: lag when the devices stop" "events" 0 "<=" 0 "0" "${paced_final[@]}"
bench_figure "fast: D2C ingest" "msg/s" 0 "" "" "" "${fast_in[@]}"
bench_figure "fast: events received by the consumer" "events/s" 0 "" "" "" "${fast_out[@]}"
bench_figure "fast: largest lag seen" "events" 0 "" "" "" "${fast_lag[@]}"
bench_figure "fast: time to drain after the devices stop" "ms" 0 "" "" "" "${fast_drain[@]}"
bench_figure "one consumer alone, reading a backlog" "events/s" 0 "" "" "" "$alone"
bench_figure "server CPU per event sent to the consumer" "µs" 1 "" "" "" "$per_event"
bench_note "$DEVICES devices over MQTT, lab readings; one @azure/event-hubs consumer (Node $(node --version)) on the same cores reading all $(bench_get "$DATA/endpoint.json" partitions) partitions; muster's data on $BENCH_FS"
