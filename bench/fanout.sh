#!/usr/bin/env bash
# Desired-property fan-out: a desired patch to every device of a connected fleet through the
# service REST API (PATCH /twins/{id}), each timed from its PATCH to the device's
# $iothub/twin/PATCH/properties/desired notification.
#
#   DEVICES=1000 REPEAT=3 bench/fanout.sh
#
# Per repeat a fleet of DEVICES new devices (prefix fan<r>-) provisions, connects, sends no
# telemetry (--duration 0s), then the fleet PATCHes every twin (FANOUT_CONCURRENCY at a time) and
# waits for every notification.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-1000}
CONCURRENCY=${CONCURRENCY:-256}
# PATCH requests in flight: 1 times each notification alone (the latency goal); more measures
# how fast a patch reaches every device.
FANOUT_CONCURRENCY=${FANOUT_CONCURRENCY:-1}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
bench_require_uint DEVICES "$DEVICES"
bench_require_uint CONCURRENCY "$CONCURRENCY"
bench_require_uint SOURCE_ADDRESSES "$SOURCE_ADDRESSES"

bench_setup fanout
bench_raise_nofile
bench_header "desired-property fan-out" "DEVICES=$DEVICES CONCURRENCY=$CONCURRENCY SOURCE_ADDRESSES=$SOURCE_ADDRESSES"

DATA=$WORK/data
CERTS=$WORK/certs
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
bench_log "muster serve: pid $SERVER_PID, MQTT port $MQTT_PORT, HTTPS port $HTTPS_PORT, ID scope $SCOPE"

f50=() f99=() fmax=() ftotal=() fgot=()
for ((r = 1; r <= REPEAT; r++)); do
    bench_log "run $r/$REPEAT: fleet of $DEVICES devices (prefix fan$r-): provision, connect, fan-out"
    bench_fleet "$WORK/fleet-$r.json" \
        --devices "$DEVICES" --concurrency "$CONCURRENCY" --prefix "fan$r-" \
        --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" \
        --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" --trust "$DATA/tls/ca.pem" \
        --duration 0s --source-addresses "$SOURCE_ADDRESSES" \
        --fanout --fanout-concurrency "$FANOUT_CONCURRENCY" --data-dir "$DATA"
    v=$(bench_get "$WORK/fleet-$r.json" twinFanoutMs.p50 twinFanoutMs.p99 twinFanoutMs.max \
        twinFanoutTotalMs twinFanoutReceived connected)
    IFS=$'\t' read -r a b c d got connected <<<"$v"
    [[ $got == "$connected" ]] || bench_warn "run $r: $got of $connected connected devices got the patch"
    f50+=("$a") f99+=("$b") fmax+=("$c") ftotal+=("$d")
    fgot+=("$(bench_calc "$got / $DEVICES * 100")")
    bench_log "run $r/$REPEAT: p50 $a ms, p99 $b ms, max $c ms, all $got in $d ms"
done

echo
echo "Results ($REPEAT runs; median, min and max):"
bench_figure "desired patch → device, p50" "ms" 2 "" "" "" "${f50[@]}"
bench_figure "desired patch → device, p99" "ms" 2 "<=" 5 "≤ 5 ms" "${f99[@]}"
bench_figure "desired patch → device, max" "ms" 2 "" "" "" "${fmax[@]}"
bench_figure "first PATCH → last notification ($DEVICES devices)" "ms" 1 "" "" "" "${ftotal[@]}"
bench_figure "devices notified" "%" 1 "" "" "" "${fgot[@]}"
bench_note "each latency runs from sending the PATCH (REST over HTTPS, $FANOUT_CONCURRENCY in flight, one TLS client) to the device receiving the notification; both ends on this machine"
