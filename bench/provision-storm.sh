#!/usr/bin/env bash
# Provisioning and connect storm: X.509 registrations per second through muster's DPS and hub
# connects per second, each against the bare mutual-TLS handshake rate measured in the same run.
#
#   DEVICES=10000 CONCURRENCY=256 REPEAT=3 bench/provision-storm.sh
#
# Per repeat: `muster bench handshake` (bare rustls server and client, same CA and certificate
# profile, HANDSHAKE_SECONDS), then a fleet of DEVICES new devices (prefix storm<r>-) that
# provisions through DPS and connects to the hub (--duration 0s: no telemetry).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-10000}
CONCURRENCY=${CONCURRENCY:-256}
HANDSHAKE_SECONDS=${HANDSHAKE_SECONDS:-5}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
CONNECT_RATE=${CONNECT_RATE:-}
bench_require_uint DEVICES "$DEVICES"
bench_require_uint CONCURRENCY "$CONCURRENCY"
bench_require_uint SOURCE_ADDRESSES "$SOURCE_ADDRESSES"

bench_setup provision-storm
bench_raise_nofile
bench_header "provisioning and connect storm" \
    "DEVICES=$DEVICES CONCURRENCY=$CONCURRENCY HANDSHAKE_SECONDS=$HANDSHAKE_SECONDS SOURCE_ADDRESSES=$SOURCE_ADDRESSES${CONNECT_RATE:+ CONNECT_RATE=$CONNECT_RATE}"

DATA=$WORK/data
CERTS=$WORK/certs
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
bench_log "muster serve: pid $SERVER_PID, MQTT port $MQTT_PORT, HTTPS port $HTTPS_PORT, ID scope $SCOPE"

rate_args=()
[[ -z $CONNECT_RATE ]] || rate_args=(--connect-rate "$CONNECT_RATE")

hs=() prov=() conn=() peff=() ceff=() azure=() p50=() p99=() c99=()
for ((r = 1; r <= REPEAT; r++)); do
    bench_log "run $r/$REPEAT: bare mutual-TLS handshakes for ${HANDSHAKE_SECONDS}s at concurrency $CONCURRENCY"
    "$MUSTER" bench handshake --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" \
        --seconds "$HANDSHAKE_SECONDS" --concurrency "$CONCURRENCY" --json \
        >"$WORK/handshake-$r.json" 2>"$WORK/handshake-$r.err"
    v=$(bench_get "$WORK/handshake-$r.json" handshakesPerSec failures)
    IFS=$'\t' read -r h_rate h_fail <<<"$v"
    [[ $h_fail == 0 ]] || bench_warn "$h_fail handshakes failed in run $r"

    bench_log "run $r/$REPEAT: fleet of $DEVICES devices (prefix storm$r-): provision, connect"
    bench_fleet "$WORK/fleet-$r.json" \
        --devices "$DEVICES" --concurrency "$CONCURRENCY" ${rate_args[@]+"${rate_args[@]}"} \
        --prefix "storm$r-" \
        --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" \
        --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" --trust "$DATA/tls/ca.pem" \
        --duration 0s --qos 1 --payload-bytes 128 --in-flight 8 \
        --source-addresses "$SOURCE_ADDRESSES"
    v=$(bench_get "$WORK/fleet-$r.json" \
        provisionPerSec connectPerSec provisionLatencyMs.p50 provisionLatencyMs.p99 connectLatencyMs.p99)
    IFS=$'\t' read -r p_rate c_rate l50 l99 k99 <<<"$v"

    hs+=("$h_rate") prov+=("$p_rate") conn+=("$c_rate") p50+=("$l50") p99+=("$l99") c99+=("$k99")
    peff+=("$(bench_calc "$p_rate / $h_rate * 100")")
    ceff+=("$(bench_calc "$c_rate / $h_rate * 100")")
    azure+=("$(bench_calc "$p_rate * 60 / 1000")")
    bench_log "run $r/$REPEAT: handshakes $(bench_round "$h_rate")/s, registrations $(bench_round "$p_rate")/s, connects $(bench_round "$c_rate")/s"
done

echo
echo "Results ($REPEAT runs; median, min and max; ratios are taken within each run):"
bench_figure "bare mutual-TLS handshakes" "handshakes/s" 0 "" "" "" "${hs[@]}"
bench_figure "X.509 registrations through DPS" "registrations/s" 0 ">=" 1000 "≥ 1,000/s" "${prov[@]}"
bench_figure "provisioning efficiency (registrations/handshakes)" "%" 1 ">=" 70 "≥ 70%" "${peff[@]}"
bench_figure "registration latency p50" "ms" 1 "" "" "" "${p50[@]}"
bench_figure "registration latency p99" "ms" 1 "" "" "" "${p99[@]}"
bench_figure "hub connects (TLS + CONNECT + SUBSCRIBE)" "connects/s" 0 "" "" "" "${conn[@]}"
bench_figure "connect efficiency (connects/handshakes)" "%" 1 ">=" 70 "≥ 70%" "${ceff[@]}"
bench_figure "connect latency p99" "ms" 1 "" "" "" "${c99[@]}"
bench_figure "registrations vs Azure DPS default quota" "× 1,000/min" 1 "" "" "" "${azure[@]}"
bench_note "$DEVICES new X.509 registrations per run at concurrency $CONCURRENCY (device certificates minted by the fleet before its timed phases); the handshake bound and the storm run on the same machine, one after the other; Azure DPS allows 1,000 registrations/min per instance by default (adjustable)"
