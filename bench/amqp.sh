#!/usr/bin/env bash
# AMQP next to MQTT on the same server, alternately in each run: X.509 hub connects/s against
# the bare mutual-TLS handshake rate, D2C messages/s acknowledged once durable, and server
# memory per idle connected device.
#
#   DEVICES=1000 DURATION=15 IN_FLIGHT=8 REPEAT=3 bench/amqp.sh
#
# The devices are provisioned once (prefix amq-, over MQTT); each run then connects them
# straight to the hub (--no-provision), first over MQTT, then over AMQP, and sends as fast as
# acknowledgements allow (IN_FLIGHT unacknowledged messages per device). An acknowledgement
# (PUBACK or the AMQP Accepted outcome) means the message is in the event log, fsync'd. Idle
# memory: the server's RSS with the fleet connected and silent minus its RSS before, on a
# freshly started server. The load generator (muster device fleet) runs on the same cores, so
# the server's own CPU time per message is reported as well.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-1000}
DURATION=${DURATION:-15}
IN_FLIGHT=${IN_FLIGHT:-8}
CONCURRENCY=${CONCURRENCY:-256}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-128}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
IDLE_SECONDS=${IDLE_SECONDS:-20}
HANDSHAKE_SECONDS=${HANDSHAKE_SECONDS:-5}
for v in DEVICES DURATION IN_FLIGHT CONCURRENCY PAYLOAD_BYTES SOURCE_ADDRESSES IDLE_SECONDS HANDSHAKE_SECONDS; do
    bench_require_uint "$v" "${!v}"
done

bench_setup amqp
bench_raise_nofile
bench_header "AMQP vs MQTT on one muster server" \
    "DEVICES=$DEVICES DURATION=$DURATION IN_FLIGHT=$IN_FLIGHT PAYLOAD_BYTES=$PAYLOAD_BYTES CONCURRENCY=$CONCURRENCY SOURCE_ADDRESSES=$SOURCE_ADDRESSES"

DATA=$WORK/data
CERTS=$WORK/certs
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
bench_log "muster serve: pid $SERVER_PID, MQTT port $MQTT_PORT, AMQP port $AMQP_PORT, ID scope $SCOPE"

tls=(--ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" --trust "$DATA/tls/ca.pem"
    --identity-dir "$WORK/identities")
bench_log "provisioning the $DEVICES devices once (prefix amq-)"
bench_fleet "$WORK/provision.json" "${tls[@]}" --devices "$DEVICES" --concurrency "$CONCURRENCY" \
    --prefix amq- --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" \
    --duration 0s --source-addresses "$SOURCE_ADDRESSES"
v=$(bench_get "$WORK/provision.json" provisioned)
[[ $v == "$DEVICES" ]] || bench_warn "only $v of $DEVICES devices provisioned"

load=(--devices "$DEVICES" --concurrency "$CONCURRENCY" --prefix amq- --no-provision
    --hub-host localhost --duration "${DURATION}s" --telemetry-interval 0s --qos 1
    --payload-bytes "$PAYLOAD_BYTES" --in-flight "$IN_FLIGHT" --source-addresses "$SOURCE_ADDRESSES")

# RSS of a freshly started server with the fleet connected and idle, minus before, per device
# (KiB). A fresh server each time: memory an earlier run freed would otherwise be reused and
# hide what the connections take.
idle_per_device() {
    local transport=$1 out=$2 before after pid port
    bench_stop_server
    bench_start_server "$DATA" "$WORK/server.log"
    port=$MQTT_PORT
    [[ $transport == amqp ]] && port=$AMQP_PORT
    sleep 2
    before=$(bench_rss_kib "$SERVER_PID")
    "$MUSTER" device fleet "${tls[@]}" --devices "$DEVICES" --concurrency "$CONCURRENCY" \
        --prefix amq- --no-provision --hub-host localhost --hub-port "$port" --transport "$transport" \
        --duration "${IDLE_SECONDS}s" --telemetry-interval 3600s --qos 1 \
        --source-addresses "$SOURCE_ADDRESSES" --json >"$out" 2>"${out%.json}.err" &
    pid=$!
    bench_track_pid "$pid"
    sleep $((IDLE_SECONDS * 3 / 4))
    after=$(bench_rss_kib "$SERVER_PID")
    wait "$pid" || true
    bench_untrack_pid "$pid"
    bench_calc "($after - $before) / $DEVICES"
}

hs=() m_conn=() a_conn=() m_eff=() a_eff=() m_rate=() a_rate=() ratio=() m_idle=() a_idle=() m_cpu=() a_cpu=() m_ccpu=() a_ccpu=()
for ((r = 1; r <= REPEAT; r++)); do
    bench_log "run $r/$REPEAT: bare mutual-TLS handshakes for ${HANDSHAKE_SECONDS}s"
    "$MUSTER" bench handshake --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" \
        --concurrency "$CONCURRENCY" --seconds "$HANDSHAKE_SECONDS" --json \
        >"$WORK/handshake-$r.json" 2>"$WORK/handshake-$r.err"
    h=$(bench_get "$WORK/handshake-$r.json" handshakesPerSec)

    bench_log "run $r/$REPEAT: MQTT, $DEVICES devices, ${DURATION}s"
    c0=$(bench_cpu_seconds "$SERVER_PID")
    bench_fleet "$WORK/mqtt-$r.json" "${tls[@]}" "${load[@]}" --hub-port "$MQTT_PORT" --transport mqtt
    c1=$(bench_cpu_seconds "$SERVER_PID")
    v=$(bench_get "$WORK/mqtt-$r.json" messagesPerSec connectPerSec connected messagesAcked)
    IFS=$'\t' read -r mr mc mn macked <<<"$v"
    [[ $mn == "$DEVICES" ]] || bench_warn "MQTT run $r: $mn of $DEVICES devices connected"

    bench_log "run $r/$REPEAT: AMQP, $DEVICES devices, ${DURATION}s"
    bench_fleet "$WORK/amqp-$r.json" "${tls[@]}" "${load[@]}" --hub-port "$AMQP_PORT" --transport amqp
    c2=$(bench_cpu_seconds "$SERVER_PID")
    v=$(bench_get "$WORK/amqp-$r.json" messagesPerSec connectPerSec connected messagesAcked)
    IFS=$'\t' read -r ar ac an aacked <<<"$v"
    [[ $an == "$DEVICES" ]] || bench_warn "AMQP run $r: $an of $DEVICES devices connected"

    bench_log "run $r/$REPEAT: connects only, MQTT then AMQP (server CPU per connect)"
    conn_only=(--devices "$DEVICES" --concurrency "$CONCURRENCY" --prefix amq- --no-provision
        --hub-host localhost --duration 0s --source-addresses "$SOURCE_ADDRESSES")
    c3=$(bench_cpu_seconds "$SERVER_PID")
    bench_fleet "$WORK/mqtt-connect-$r.json" "${tls[@]}" "${conn_only[@]}" --hub-port "$MQTT_PORT" --transport mqtt
    c4=$(bench_cpu_seconds "$SERVER_PID")
    bench_fleet "$WORK/amqp-connect-$r.json" "${tls[@]}" "${conn_only[@]}" --hub-port "$AMQP_PORT" --transport amqp
    c5=$(bench_cpu_seconds "$SERVER_PID")
    m_ccpu+=("$(bench_calc "($c4 - $c3) / $DEVICES * 1000")")
    a_ccpu+=("$(bench_calc "($c5 - $c4) / $DEVICES * 1000")")

    bench_log "run $r/$REPEAT: idle memory, MQTT then AMQP"
    idle_per_device mqtt "$WORK/idle-mqtt-$r.json" >"$WORK/idle-mqtt-$r.kib"
    idle_per_device amqp "$WORK/idle-amqp-$r.json" >"$WORK/idle-amqp-$r.kib"
    mi=$(cat "$WORK/idle-mqtt-$r.kib") ai=$(cat "$WORK/idle-amqp-$r.kib")

    hs+=("$h") m_conn+=("$mc") a_conn+=("$ac") m_rate+=("$mr") a_rate+=("$ar")
    m_eff+=("$(bench_calc "$mc / $h * 100")") a_eff+=("$(bench_calc "$ac / $h * 100")")
    ratio+=("$(bench_calc "$ar / $mr")") m_idle+=("$mi") a_idle+=("$ai")
    m_cpu+=("$(bench_calc "($c1 - $c0) / $macked * 1000000")")
    a_cpu+=("$(bench_calc "($c2 - $c1) / $aacked * 1000000")")
    bench_log "run $r/$REPEAT: handshakes $(bench_round "$h")/s; connects MQTT $(bench_round "$mc")/s, AMQP $(bench_round "$ac")/s; D2C MQTT $(bench_round "$mr") msg/s, AMQP $(bench_round "$ar") msg/s; idle MQTT $(bench_round "$mi" 1) KiB, AMQP $(bench_round "$ai" 1) KiB per device"
done

echo
echo "Results ($REPEAT runs, MQTT and AMQP alternately in each; median, min and max):"
bench_figure "bare mutual-TLS handshakes" "handshakes/s" 0 "" "" "" "${hs[@]}"
bench_figure "MQTT X.509 hub connects" "connects/s" 0 "" "" "" "${m_conn[@]}"
bench_figure "AMQP X.509 hub connects" "connects/s" 0 "" "" "" "${a_conn[@]}"
bench_figure "AMQP connect efficiency (connects/handshakes)" "%" 1 ">=" 70 "≥ 70%" "${a_eff[@]}"
bench_figure "MQTT connect efficiency (connects/handshakes)" "%" 1 "" "" "" "${m_eff[@]}"
bench_figure "MQTT D2C messages acknowledged" "msg/s" 0 "" "" "" "${m_rate[@]}"
bench_figure "AMQP D2C messages acknowledged" "msg/s" 0 "" "" "" "${a_rate[@]}"
bench_figure "AMQP / MQTT D2C (same run)" "×" 2 ">=" 0.8 "≥ 0.8×" "${ratio[@]}"
bench_figure "server CPU per MQTT message (connects included)" "µs" 1 "" "" "" "${m_cpu[@]}"
bench_figure "server CPU per AMQP message (connects included)" "µs" 1 "" "" "" "${a_cpu[@]}"
bench_figure "server CPU per MQTT connect (connect-only run)" "ms" 2 "" "" "" "${m_ccpu[@]}"
bench_figure "server CPU per AMQP connect (connect-only run)" "ms" 2 "" "" "" "${a_ccpu[@]}"
bench_figure "server memory per idle MQTT device" "KiB" 1 "" "" "" "${m_idle[@]}"
bench_figure "server memory per idle AMQP device" "KiB" 1 "" "" "" "${a_idle[@]}"
bench_note "an AMQP connect is TCP + TLS + AMQP header + open + begin + six link attaches (telemetry, C2D, twin pair, method pair) + the twin subscription; an MQTT connect is TCP + TLS + CONNECT + SUBSCRIBE"
bench_note "$DEVICES devices, $IN_FLIGHT messages in flight each, ${PAYLOAD_BYTES}-byte bodies, X.509 client certificates; muster's data on $BENCH_FS"
