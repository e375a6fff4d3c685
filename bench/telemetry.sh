#!/usr/bin/env bash
# Device-to-cloud telemetry: QoS 1 messages acknowledged per second by muster's hub and by
# Mosquitto 2 on the same machine, with the same fleet, certificates and TLS, alternately.
#
#   DEVICES=1000 DURATION=30 IN_FLIGHT=8 REPEAT=3 bench/telemetry.sh
#
# DURATION is in seconds (the variable is not called SECONDS: bash owns that name).
# muster: the devices are provisioned once (prefix tele-), then each run connects them straight
# to the hub (--no-provision) and sends as fast as PUBACKs allow, IN_FLIGHT unacknowledged
# messages per device. A PUBACK from muster means the message is in the event log, fsync'd
# (group commit). Mosquitto: the same devices and client certificates against a TLS listener
# that requires a certificate from the fleet's CA and presents muster's own server certificate;
# persistence off; one subscriber on devices/# at QoS 1 receives everything it routes.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-1000}
DURATION=${DURATION:-30}
IN_FLIGHT=${IN_FLIGHT:-8}
CONCURRENCY=${CONCURRENCY:-256}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-128}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-4}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
MOSQUITTO_SUB=${MOSQUITTO_SUB:-mosquitto_sub}
MOSQUITTO_PUB=${MOSQUITTO_PUB:-mosquitto_pub}
for v in DEVICES DURATION IN_FLIGHT CONCURRENCY PAYLOAD_BYTES SOURCE_ADDRESSES; do
    bench_require_uint "$v" "${!v}"
done

have_mosquitto() {
    if [[ ! -x $MOSQUITTO ]] && command -v mosquitto >/dev/null 2>&1; then
        MOSQUITTO=$(command -v mosquitto)
    fi
    [[ -x $MOSQUITTO ]] && command -v "$MOSQUITTO_SUB" >/dev/null 2>&1 && command -v "$MOSQUITTO_PUB" >/dev/null 2>&1
}

if ! have_mosquitto; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        bench_log "Mosquitto is missing: installing mosquitto and mosquitto-clients with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >&2 || true
    fi
    if ! have_mosquitto; then
        cat >&2 <<EOF
telemetry.sh compares muster with Mosquitto 2 and needs the broker ($MOSQUITTO) and its
clients (mosquitto_sub, mosquitto_pub). Install them, then run this script again:
    sudo apt-get install -y mosquitto mosquitto-clients      # Debian, Ubuntu
    sudo dnf install -y mosquitto                            # Fedora (clients included)
or point MOSQUITTO=/path/to/mosquitto MOSQUITTO_SUB=… MOSQUITTO_PUB=… at another build.
EOF
        exit 2
    fi
fi
mosq_help=$("$MOSQUITTO" -h 2>&1 || true)
MOSQ_VERSION=unknown
if [[ $mosq_help =~ version\ ([0-9][0-9.]*) ]]; then
    MOSQ_VERSION=${BASH_REMATCH[1]}
fi
[[ $MOSQ_VERSION == 2.* ]] || bench_warn "Mosquitto $MOSQ_VERSION: the comparison is defined against Mosquitto 2.x"

bench_setup telemetry
bench_raise_nofile
bench_header "D2C telemetry: muster vs Mosquitto $MOSQ_VERSION" \
    "DEVICES=$DEVICES DURATION=$DURATION IN_FLIGHT=$IN_FLIGHT PAYLOAD_BYTES=$PAYLOAD_BYTES CONCURRENCY=$CONCURRENCY SOURCE_ADDRESSES=$SOURCE_ADDRESSES"

DATA=$WORK/data
CERTS=$WORK/certs
bench_start_server "$DATA" "$WORK/server.log"
bench_certs "$CERTS"
bench_enroll "$DATA" "$CERTS"
SCOPE=$(bench_id_scope "$DATA")
bench_log "muster serve: pid $SERVER_PID, MQTT port $MQTT_PORT, ID scope $SCOPE"

# The identities minted when provisioning are kept and reused, so later runs connect as the
# devices the hub knows (an X.509 device is pinned to its certificate's thumbprint).
tls=(--ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" --trust "$DATA/tls/ca.pem"
    --identity-dir "$WORK/identities")
load=(--devices "$DEVICES" --concurrency "$CONCURRENCY" --prefix tele-
    --duration "${DURATION}s" --telemetry-interval 0s --qos 1 --payload-bytes "$PAYLOAD_BYTES"
    --in-flight "$IN_FLIGHT" --source-addresses "$SOURCE_ADDRESSES")

bench_log "provisioning the $DEVICES devices once (prefix tele-)"
bench_fleet "$WORK/provision.json" "${tls[@]}" --devices "$DEVICES" --concurrency "$CONCURRENCY" \
    --prefix tele- --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" \
    --duration 0s --source-addresses "$SOURCE_ADDRESSES"
v=$(bench_get "$WORK/provision.json" provisioned)
[[ $v == "$DEVICES" ]] || bench_warn "only $v of $DEVICES devices provisioned: the others cannot connect to muster"

# Mosquitto: TLS listener on a free port, client certificates from the fleet's CA required,
# muster's server certificate (so --trust DATA/tls/ca.pem works for both).
MOSQ_PORT=$(bench_free_port)
"$MUSTER" certs create-device-cert bench-subscriber --dir "$CERTS" >/dev/null
{
    echo "# written by bench/telemetry.sh"
    echo "per_listener_settings false"
    echo "allow_anonymous true"
    echo "# no persistence: Mosquitto answers PUBACK without writing the message anywhere"
    echo "persistence false"
    echo "# max_inflight_messages: default (20)"
    echo "max_queued_messages 100000"
    echo "# muster sets TCP_NODELAY on its sockets; the same here"
    echo "set_tcp_nodelay true"
    echo "connection_messages false"
    echo "log_dest stderr"
    echo "log_type error"
    echo "log_type warning"
    # Started as root, Mosquitto switches to the user 'mosquitto', who cannot read the keys in
    # this (private) work directory; stay root for the benchmark.
    if [[ $(id -u) == 0 ]]; then echo "user root"; fi
    echo "listener $MOSQ_PORT 127.0.0.1"
    echo "cafile $CERTS/root-ca.pem"
    echo "certfile $DATA/tls/server.pem"
    echo "keyfile $DATA/tls/server.key.pem"
    echo "require_certificate true"
    echo "use_identity_as_username false"
} >"$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
MOSQ_PID=$!
bench_track_pid "$MOSQ_PID"
bench_wait_tcp 127.0.0.1 "$MOSQ_PORT" 15 || bench_die "Mosquitto did not start; see $WORK/mosquitto.log"
bench_log "mosquitto: pid $MOSQ_PID, port $MOSQ_PORT"

# The subscriber writes one byte per message, so the file's size counts what Mosquitto routed.
sub_tls=(--cafile "$DATA/tls/ca.pem" --cert "$CERTS/bench-subscriber.pem" --key "$CERTS/bench-subscriber.key.pem")
SUB_OUT=$WORK/subscriber.out
start_subscriber() {
    "$MOSQUITTO_SUB" -h localhost -p "$MOSQ_PORT" "${sub_tls[@]}" -i bench-subscriber \
        -t 'devices/#' -q 1 -N -F . >>"$SUB_OUT" 2>>"$WORK/subscriber.err" &
    SUB_PID=$!
    bench_track_pid "$SUB_PID"
    # A probe message proves the subscription is in place and routing works.
    local want=$(($(size_of "$SUB_OUT") + 1)) i
    for ((i = 0; i < 100; i++)); do
        "$MOSQUITTO_PUB" -h localhost -p "$MOSQ_PORT" "${sub_tls[@]}" -i bench-probe \
            -t devices/bench-probe/messages/events/ -q 1 -m probe 2>>"$WORK/subscriber.err" || true
        sleep 0.1
        (($(size_of "$SUB_OUT") >= want)) && return 0
        kill -0 "$SUB_PID" 2>/dev/null || bench_die "mosquitto_sub exited; see $WORK/subscriber.err"
    done
    bench_die "the subscriber receives nothing from Mosquitto; see $WORK/subscriber.err and $WORK/mosquitto.log"
}
size_of() { if [[ -e $1 ]]; then stat -c %s "$1"; else echo 0; fi; }
# Until the subscriber's count has not moved for a second (at most 60 s).
wait_subscriber_drained() {
    local last=-1 now stable=0 i
    for ((i = 0; i < 600 && stable < 10; i++)); do
        now=$(size_of "$SUB_OUT")
        if [[ $now == "$last" ]]; then stable=$((stable + 1)); else stable=0; fi
        last=$now
        sleep 0.1
    done
}
: >"$SUB_OUT"
start_subscriber

# The load generators: `muster device fleet` (muster's own device client) and bench/flood (a
# lean single-threaded MQTT client that shares no code with muster), each against both servers.
GENERATORS=${GENERATORS:-fleet flood}
FLOOD=${FLOOD:-$(dirname "$MUSTER")/flood}
if [[ " $GENERATORS " == *" flood "* && ! -x $FLOOD ]]; then
    bench_die "no flood binary at $FLOOD: 'cargo build --release' builds it (bench/flood), or set FLOOD=/path/to/flood or GENERATORS=fleet"
fi

# run_load GEN OUT PORT SERVER_PID: one timed run. Sets RUN_RATE (acknowledged msg/s),
# RUN_ACKED, RUN_US (the server's CPU µs per message: over the whole run with the fleet,
# connects included; over the sending window only with flood), RUN_P50 and RUN_P99 (fleet only).
run_load() {
    local gen=$1 out=$2 port=$3 pid=$4 c0 c1 v connected
    RUN_P50=nan RUN_P99=nan
    if [[ $gen == fleet ]]; then
        c0=$(bench_cpu_seconds "$pid")
        bench_fleet "$out" "${tls[@]}" "${load[@]}" --no-provision --hub-host localhost --hub-port "$port"
        c1=$(bench_cpu_seconds "$pid")
        v=$(bench_get "$out" messagesPerSec messagesAcked publishLatencyMs.p50 publishLatencyMs.p99 connected)
        IFS=$'\t' read -r RUN_RATE RUN_ACKED RUN_P50 RUN_P99 connected <<<"$v"
        RUN_US=$(bench_calc "($c1 - $c0) * 1e6 / $RUN_ACKED")
    else
        "$FLOOD" --host localhost --port "$port" --ca "$DATA/tls/ca.pem" --identities "$WORK/identities" \
            --prefix tele- --devices "$DEVICES" --in-flight "$IN_FLIGHT" --duration "$DURATION" \
            --payload-bytes "$PAYLOAD_BYTES" --source-addresses "$SOURCE_ADDRESSES" --server-pid "$pid" \
            >"$out" 2>"${out%.json}.err" || bench_die "flood failed; see ${out%.json}.err"
        v=$(bench_get "$out" messagesPerSec acked serverCpuUsPerMessage connected)
        IFS=$'\t' read -r RUN_RATE RUN_ACKED RUN_US connected <<<"$v"
    fi
    [[ $connected == "$DEVICES" ]] || bench_warn "$gen against port $port: $connected of $DEVICES devices connected"
}

declare -A m_rate q_rate n_rate ratio ratio_n m_us q_us n_us routed
m50=() m99=() q50=() q99=()
for ((r = 1; r <= REPEAT; r++)); do
    for gen in $GENERATORS; do
        bench_log "run $r/$REPEAT ($gen): muster, $DEVICES devices, ${DURATION}s"
        run_load "$gen" "$WORK/muster-$gen-$r.json" "$MQTT_PORT" "$SERVER_PID"
        mr=$RUN_RATE mu=$RUN_US
        [[ $gen == fleet ]] && m50+=("$RUN_P50") m99+=("$RUN_P99")

        kill -0 "$SUB_PID" 2>/dev/null || start_subscriber
        before=$(size_of "$SUB_OUT")
        bench_log "run $r/$REPEAT ($gen): Mosquitto with a QoS 1 subscriber, $DEVICES devices, ${DURATION}s"
        run_load "$gen" "$WORK/mosquitto-$gen-$r.json" "$MOSQ_PORT" "$MOSQ_PID"
        wait_subscriber_drained
        received=$(($(size_of "$SUB_OUT") - before))
        qr=$RUN_RATE qu=$RUN_US qacked=$RUN_ACKED
        [[ $gen == fleet ]] && q50+=("$RUN_P50") q99+=("$RUN_P99")

        bench_stop_pid "$SUB_PID" 5
        bench_log "run $r/$REPEAT ($gen): Mosquitto without a subscriber, $DEVICES devices, ${DURATION}s"
        run_load "$gen" "$WORK/mosquitto-nosub-$gen-$r.json" "$MOSQ_PORT" "$MOSQ_PID"
        nr=$RUN_RATE nu=$RUN_US
        start_subscriber

        m_rate[$gen]+="$mr " q_rate[$gen]+="$qr " n_rate[$gen]+="$nr "
        ratio[$gen]+="$(bench_calc "$mr / $qr") " ratio_n[$gen]+="$(bench_calc "$mr / $nr") "
        m_us[$gen]+="$mu " q_us[$gen]+="$qu " n_us[$gen]+="$nu "
        routed[$gen]+="$(bench_calc "$received / $qacked * 100") "
        bench_log "run $r/$REPEAT ($gen): muster $(bench_round "$mr") msg/s ($(bench_round "$mu" 1) µs CPU each), Mosquitto $(bench_round "$qr") with a subscriber ($(bench_round "$qu" 1) µs), $(bench_round "$nr") without ($(bench_round "$nu" 1) µs)"
    done
done

echo
echo "Results ($REPEAT alternating runs of ${DURATION}s each per generator; median, min and max):"
for gen in $GENERATORS; do
    # shellcheck disable=SC2086 # the lists are space-separated on purpose
    {
        bench_figure "[$gen] muster: D2C QoS 1 messages acknowledged" "msg/s" 0 "" "" "" ${m_rate[$gen]}
        bench_figure "[$gen] Mosquitto $MOSQ_VERSION with a subscriber" "msg/s" 0 "" "" "" ${q_rate[$gen]}
        bench_figure "[$gen] Mosquitto $MOSQ_VERSION without a subscriber" "msg/s" 0 "" "" "" ${n_rate[$gen]}
        bench_figure "[$gen] muster / Mosquitto with a subscriber" "×" 2 ">=" 2 "≥ 2×" ${ratio[$gen]}
        bench_figure "[$gen] muster / Mosquitto without a subscriber" "×" 2 ">=" 2 "≥ 2×" ${ratio_n[$gen]}
        bench_figure "[$gen] muster server CPU per message" "µs" 1 "" "" "" ${m_us[$gen]}
        bench_figure "[$gen] Mosquitto CPU per message, with a subscriber" "µs" 1 "" "" "" ${q_us[$gen]}
        bench_figure "[$gen] Mosquitto CPU per message, without" "µs" 1 "" "" "" ${n_us[$gen]}
        bench_figure "[$gen] Mosquitto: acknowledged messages the subscriber got" "%" 1 "" "" "" ${routed[$gen]}
    }
done
if [[ " $GENERATORS " == *" fleet "* ]]; then
    bench_figure "[fleet] muster publish latency p50" "ms" 2 "" "" "" "${m50[@]}"
    bench_figure "[fleet] muster publish latency p99" "ms" 2 "" "" "" "${m99[@]}"
    bench_figure "[fleet] Mosquitto publish latency p50" "ms" 2 "" "" "" "${q50[@]}"
    bench_figure "[fleet] Mosquitto publish latency p99" "ms" 2 "" "" "" "${q99[@]}"
fi
bench_note "muster acknowledges a QoS 1 message once it is in the event log, fsync'd (group commit); Mosquitto (persistence false) acknowledges without writing it anywhere, and with a subscriber routes it to one QoS 1 subscriber on devices/#"
bench_note "server CPU per message: with the fleet over the whole run (connects included), with flood over the sending window only (flood reads the server's /proc/PID/stat at its start and end)"
bench_note "$DEVICES devices, $IN_FLIGHT messages in flight each, ${PAYLOAD_BYTES}-byte bodies, TLS with client certificates on both; muster's data on $BENCH_FS"
