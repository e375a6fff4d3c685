#!/usr/bin/env bash
# The cost of message routing: D2C messages/s acknowledged once durable with no routes, then
# with ROUTES routes that each have a condition, alternately in each run on one server.
#
#   DEVICES=1000 DURATION=15 IN_FLIGHT=8 ROUTES=10 REPEAT=3 bench/routing.sh
#
# The fleet sends the lab's readings (--lab-payload: a JSON body with temperature and humidity,
# the temperatureAlert property, JSON content type), so conditions on properties and on $body
# both do real work: the body is parsed and every condition evaluated for every message. The
# routes send to the built-in endpoint, so what is measured is routing itself, not a
# destination.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-1000}
DURATION=${DURATION:-15}
IN_FLIGHT=${IN_FLIGHT:-8}
CONCURRENCY=${CONCURRENCY:-256}
ROUTES=${ROUTES:-10}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
for v in DEVICES DURATION IN_FLIGHT CONCURRENCY ROUTES SOURCE_ADDRESSES; do
    bench_require_uint "$v" "${!v}"
done

bench_setup routing
bench_raise_nofile
bench_header "Routing cost: D2C with and without $ROUTES conditional routes" \
    "DEVICES=$DEVICES DURATION=$DURATION IN_FLIGHT=$IN_FLIGHT ROUTES=$ROUTES CONCURRENCY=$CONCURRENCY"

DATA=$WORK/data
CERTS=$WORK/certs
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
tls=(--ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" --trust "$DATA/tls/ca.pem"
    --identity-dir "$WORK/identities")
bench_log "provisioning the $DEVICES devices once (prefix rt-)"
bench_fleet "$WORK/provision.json" "${tls[@]}" --devices "$DEVICES" --concurrency "$CONCURRENCY" \
    --prefix rt- --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" \
    --duration 0s --source-addresses "$SOURCE_ADDRESSES"

load=(--devices "$DEVICES" --concurrency "$CONCURRENCY" --prefix rt- --no-provision
    --hub-host localhost --hub-port "$MQTT_PORT" --duration "${DURATION}s" --telemetry-interval 0s
    --qos 1 --lab-payload --in-flight "$IN_FLIGHT" --source-addresses "$SOURCE_ADDRESSES")

# Conditions of the kinds IoT Hub users write; each route is evaluated for every message.
conditions=(
    "temperatureAlert = 'true'"
    "\$body.temperature > 35"
    "\$body.humidity < 10"
    "STARTS_WITH(\$connectionDeviceId, 'rt-')"
    "AS_NUMBER(\$body.temperature) >= 0 AND temperatureAlert = 'false'"
    "IS_DEFINED(\$body.pressure)"
    "\$contentType = 'application/json'"
    "LOWER(temperatureAlert) = 'true' OR \$body.temperature < 0"
    "\$body.temperature * 2 > 100"
    "NOT IS_DEFINED(level)"
)
add_routes() {
    local i
    for ((i = 0; i < ROUTES; i++)); do
        "$MUSTER" hub --data-dir "$DATA" route create -n "r$i" \
            --condition "${conditions[$((i % ${#conditions[@]}))]}" -e events >/dev/null
    done
}
remove_routes() {
    local i
    for ((i = 0; i < ROUTES; i++)); do
        "$MUSTER" hub --data-dir "$DATA" route delete -n "r$i" >/dev/null
    done
}

plain=() routed=() ratio=() p_cpu=() r_cpu=()
for ((r = 1; r <= REPEAT; r++)); do
    bench_log "run $r/$REPEAT: no routes"
    c0=$(bench_cpu_seconds "$SERVER_PID")
    bench_fleet "$WORK/plain-$r.json" "${tls[@]}" "${load[@]}"
    c1=$(bench_cpu_seconds "$SERVER_PID")
    IFS=$'\t' read -r pr pa <<<"$(bench_get "$WORK/plain-$r.json" messagesPerSec messagesAcked)"

    add_routes
    bench_log "run $r/$REPEAT: $ROUTES routes"
    c2=$(bench_cpu_seconds "$SERVER_PID")
    bench_fleet "$WORK/routed-$r.json" "${tls[@]}" "${load[@]}"
    c3=$(bench_cpu_seconds "$SERVER_PID")
    IFS=$'\t' read -r rr ra <<<"$(bench_get "$WORK/routed-$r.json" messagesPerSec messagesAcked)"
    remove_routes

    plain+=("$pr") routed+=("$rr") ratio+=("$(bench_calc "$rr / $pr")")
    p_cpu+=("$(bench_calc "($c1 - $c0) / $pa * 1000000")")
    r_cpu+=("$(bench_calc "($c3 - $c2) / $ra * 1000000")")
    bench_log "run $r/$REPEAT: $(bench_round "$pr") msg/s without routes, $(bench_round "$rr") with $ROUTES"
done

echo
echo "Results ($REPEAT runs, without and with routes alternately; median, min and max):"
bench_figure "D2C without routes" "msg/s" 0 "" "" "" "${plain[@]}"
bench_figure "D2C with $ROUTES conditional routes" "msg/s" 0 "" "" "" "${routed[@]}"
bench_figure "with routes / without (same run)" "×" 2 ">=" 0.8 "≥ 0.8× (cost < 20%)" "${ratio[@]}"
bench_figure "server CPU per message, no routes" "µs" 1 "" "" "" "${p_cpu[@]}"
bench_figure "server CPU per message, $ROUTES routes" "µs" 1 "" "" "" "${r_cpu[@]}"
bench_note "$DEVICES devices over MQTT, $IN_FLIGHT in flight each, lab readings (JSON body, temperatureAlert); every route to the built-in endpoint; muster's data on $BENCH_FS"
