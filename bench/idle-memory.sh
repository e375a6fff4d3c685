#!/usr/bin/env bash
# Server memory per idle connected device: the resident set (VmRSS) of `muster serve` with N
# devices connected over TLS, each subscribed as the SDKs are and idle after one message.
#
#   COUNTS="10000 50000" SOURCE_ADDRESSES=8 REPEAT=3 bench/idle-memory.sh
#
# For each count, in a fresh data directory:
#   1. start the server: RSS0 (empty server); provision the N devices (fleet --duration 0s);
#      stop the server;
#   2. REPEAT times: start the server again on that data (a fresh process): RSS1; connect the N
#      devices (fleet --no-provision) that each send one message and then stay idle
#      (--telemetry-interval 3600s); once the hub reports all N connected (a hub query, checked
#      against the kernel's count of established connections) and SETTLE seconds have passed:
#      RSS2; stop.
# Per idle device = (RSS2 - RSS1) / N: what a connection costs. Also shown: (RSS2 - RSS0) / N,
# which adds the devices' registry entries (state that survives a restart).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNTS=${COUNTS:-10000 50000}
CONCURRENCY=${CONCURRENCY:-256}
SOURCE_ADDRESSES=${SOURCE_ADDRESSES:-8}
IDLE_SECONDS=${IDLE_SECONDS:-40}
SETTLE=${SETTLE:-5}
for c in $COUNTS; do bench_require_uint COUNTS "$c"; done
bench_require_uint CONCURRENCY "$CONCURRENCY"
bench_require_uint SOURCE_ADDRESSES "$SOURCE_ADDRESSES"
bench_require_uint IDLE_SECONDS "$IDLE_SECONDS"
bench_require_uint SETTLE "$SETTLE"
((IDLE_SECONDS > SETTLE + 5)) || bench_die "IDLE_SECONDS ($IDLE_SECONDS) must exceed SETTLE + 5 ($((SETTLE + 5))): the devices must still be connected when the memory is read"

bench_setup idle-memory
bench_raise_nofile
bench_header "memory per idle device" \
    "COUNTS=\"$COUNTS\" CONCURRENCY=$CONCURRENCY SOURCE_ADDRESSES=$SOURCE_ADDRESSES IDLE_SECONDS=$IDLE_SECONDS SETTLE=$SETTLE (open files: $(ulimit -n))"
for c in $COUNTS; do
    if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < c + 1024)); then
        bench_warn "the open-file limit ($(ulimit -n)) is below $c + 1024: raise it (ulimit -n, or LimitNOFILE) or the fleet cannot connect $c devices"
    fi
done

CERTS=$WORK/certs
bench_certs "$CERTS"

# Devices the hub counts as connected (empty when the query fails).
connected_count() {
    local out
    out=$("$MUSTER" hub --data-dir "$1" query \
        -q "SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'" --output json 2>/dev/null) || return 0
    python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(d[0].get("n", 0) if d else 0)' "$out" 2>/dev/null || true
}

# Established TCP connections whose local port is PORT (the server's side of each device).
established_on() {
    python3 - "$1" <<'PY'
import sys
port = f"{int(sys.argv[1]):04X}"
n = 0
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        with open(table) as f:
            next(f, None)
            for line in f:
                cols = line.split(None, 4)
                if len(cols) > 3 and cols[3] == "01" and cols[1].rsplit(":", 1)[-1] == port:
                    n += 1
    except OSError:
        pass
print(n)
PY
}

kib_to_mib() { bench_calc "$1 / 1024"; }

for count in $COUNTS; do
    DATA=$WORK/data-$count
    bench_start_server "$DATA" "$WORK/server-$count.log"
    sleep 2
    rss0=$(bench_rss_kib "$SERVER_PID")
    bench_enroll "$DATA" "$CERTS"
    SCOPE=$(bench_id_scope "$DATA")
    bench_log "$count devices: empty server RSS $rss0 KiB; provisioning them (prefix idle-)"
    bench_fleet "$WORK/provision-$count.json" \
        --devices "$count" --concurrency "$CONCURRENCY" --prefix idle- \
        --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" \
        --identity-dir "$WORK/identities-$count" \
        --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" --trust "$DATA/tls/ca.pem" \
        --duration 0s --source-addresses "$SOURCE_ADDRESSES"
    v=$(bench_get "$WORK/provision-$count.json" provisioned)
    [[ $v == "$count" ]] || bench_warn "only $v of $count devices provisioned"
    bench_stop_server

    per=() incl=() idle_mib=() base_mib=()
    for ((r = 1; r <= REPEAT; r++)); do
        bench_start_server "$DATA" "$WORK/server-$count.log"
        sleep 2
        rss1=$(bench_rss_kib "$SERVER_PID")
        bench_log "$count devices, run $r/$REPEAT: server RSS $rss1 KiB after start; connecting the devices"
        out=$WORK/idle-$count-$r.json
        "$MUSTER" device fleet --devices "$count" --concurrency "$CONCURRENCY" --prefix idle- \
            --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" --trust "$DATA/tls/ca.pem" \
            --identity-dir "$WORK/identities-$count" --no-provision --hub-host localhost --hub-port "$MQTT_PORT" \
            --duration "${IDLE_SECONDS}s" --telemetry-interval 3600s --qos 1 --payload-bytes 128 \
            --source-addresses "$SOURCE_ADDRESSES" --json >"$out" 2>"${out%.json}.err" &
        fleet_pid=$!
        bench_track_pid "$fleet_pid"

        # Until the hub counts every device connected and the kernel shows as many established
        # connections on the MQTT port (the hub's count alone could be stale state), or the
        # count stops moving for 20 s.
        stale=$(connected_count "$DATA")
        [[ ${stale:-0} == 0 ]] || bench_warn "the hub reported $stale devices connected before the fleet started (stale state): relying on the kernel's connection count"
        deadline=$((SECONDS + 120 + count / 100))
        last=-1
        moved=$SECONDS
        while :; do
            n=$(connected_count "$DATA")
            if [[ -n $n ]] && ((n >= count)); then
                n=$(established_on "$MQTT_PORT")
                ((n < count)) || break
            fi
            kill -0 "$fleet_pid" 2>/dev/null || {
                bench_warn "the fleet ended before all devices connected ($n of $count)"
                break
            }
            if [[ $n != "$last" ]]; then
                last=$n
                moved=$SECONDS
            elif [[ -n $n ]] && ((n > 0 && SECONDS - moved >= 20)); then
                bench_warn "stuck at $n of $count connected devices: measuring those"
                break
            fi
            ((SECONDS < deadline)) || {
                bench_warn "timed out with ${n:-?} of $count connected"
                break
            }
            sleep 1
        done
        sleep "$SETTLE"
        rss2=$(bench_rss_kib "$SERVER_PID")
        n=$(established_on "$MQTT_PORT")
        hub_n=$(connected_count "$DATA")
        valid=1
        kill -0 "$fleet_pid" 2>/dev/null || valid=0
        rc=0
        wait "$fleet_pid" || rc=$?
        bench_untrack_pid "$fleet_pid"
        ((rc == 0)) || {
            bench_warn "the fleet failed (exit $rc); see ${out%.json}.err"
            valid=0
        }
        ((rc != 0)) || bench_fleet_check "$out"
        bench_stop_server
        if ((valid == 0)) || [[ -z $n ]] || ((n == 0)); then
            bench_warn "$count devices, run $r: no valid sample (fleet ended early or nothing connected)"
            per+=(nan) incl+=(nan) idle_mib+=(nan) base_mib+=(nan)
            continue
        fi
        acked=$(bench_get "$out" messagesAcked)
        per+=("$(bench_calc "($rss2 - $rss1) / $n")")
        incl+=("$(bench_calc "($rss2 - $rss0) / $n")")
        idle_mib+=("$(kib_to_mib "$rss2")")
        base_mib+=("$(kib_to_mib "$rss1")")
        bench_log "$count devices, run $r/$REPEAT: $n connections ($hub_n connected per the hub, $acked sent their message), RSS $rss1 → $rss2 KiB"
    done

    echo
    echo "Results for $count idle devices ($REPEAT runs; median, min and max):"
    bench_figure "server RSS per idle device ($count devices)" "KiB" 2 "<=" 9.765625 "≤ 10 KB (9.77 KiB)" "${per[@]}"
    bench_figure "  including registry entries ($count devices)" "KiB" 2 "" "" "" "${incl[@]}"
    bench_figure "server RSS after start, $count registered" "MiB" 1 "" "" "" "${base_mib[@]}"
    bench_figure "server RSS with $count idle devices" "MiB" 1 "" "" "" "${idle_mib[@]}"
    bench_note "empty server after start: $(printf '%.1f' "$(kib_to_mib "$rss0")") MiB RSS; devices connect over TLS with client certificates, subscribe to twin responses, desired patches, methods and C2D, send one message, then idle"
done
