#!/usr/bin/env bash
# CPU per operation per process class — muster nodes, PostgreSQL, nats-server — at 1, 2 and 3
# nodes sharing one PostgreSQL database and one NATS (JetStream) bus, for: registration (DPS,
# X.509, with its first hub connect), hub connect (with its disconnect), D2C QoS 1 and a
# service's desired-property patch (REST on node 1; with several nodes, the device's node is
# reached over the bus for (n-1)/n of them).
#
#   DEVICES=600 DURATION=10 NODES="1 2 3" bench/cluster.sh
#
# Needs PostgreSQL (BENCH_POSTGRES, default postgres://postgres@127.0.0.1/postgres, a role that
# may create databases) and NATS with JetStream (BENCH_NATS, default nats://127.0.0.1:4222).
# Each node count gets its own database, dropped afterwards. The nodes share this machine's two
# cores with the load generators, PostgreSQL and NATS: per-operation CPU is the figure that
# carries over to other machines (../shared/spec/scale-out.md §4.3), not throughput.
#
# CPU: utime + stime from /proc of the muster nodes, of every postgres process plus what the
# postmaster reaped from exited backends, and of nats-server, before and after each phase.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEVICES=${DEVICES:-600}
DURATION=${DURATION:-10}
IN_FLIGHT=${IN_FLIGHT:-8}
CONCURRENCY=${CONCURRENCY:-64}
PATCH_WORKERS=${PATCH_WORKERS:-16}
NODES=${NODES:-"1 2 3"}
BENCH_POSTGRES=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1/postgres}
BENCH_NATS=${BENCH_NATS:-nats://127.0.0.1:4222}
for v in DEVICES DURATION IN_FLIGHT CONCURRENCY PATCH_WORKERS; do
    bench_require_uint "$v" "${!v}"
done
command -v psql >/dev/null || bench_die "psql is required (apt-get install postgresql-client)"
psql "$BENCH_POSTGRES" -Atqc 'select 1' >/dev/null || bench_die "PostgreSQL at $BENCH_POSTGRES does not answer"
NATS_PID=$(pgrep -x nats-server | head -n 1) || bench_die "nats-server is not running here (its CPU is measured)"

REPEAT=1
bench_setup cluster
bench_raise_nofile
bench_header "muster on 1, 2 and 3 nodes: CPU per operation per process class" \
    "DEVICES=$DEVICES DURATION=$DURATION IN_FLIGHT=$IN_FLIGHT PATCH_WORKERS=$PATCH_WORKERS NODES=\"$NODES\""

ticks=$(getconf CLK_TCK)
# Sum of utime+stime (+ cutime+cstime with "children") over PIDs, in seconds.
cpu_of() {
    local children=$1
    shift
    local total=0 pid t
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || continue
        # Fields after the command name (which may hold spaces): 14,15 utime stime; 16,17 the
        # reaped children's.
        t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk -v c="$children" '{print $12 + $13 + (c ? $14 + $15 : 0)}')
        total=$((total + t))
    done
    bench_calc "$total / $ticks"
}
postgres_cpu() {
    local postmaster
    postmaster=$(pgrep -o -x postgres || true)
    local others
    mapfile -t others < <(pgrep -x postgres | grep -vx "${postmaster:-0}" || true)
    bench_calc "$(cpu_of 1 "$postmaster") + $(cpu_of 0 "${others[@]}")"
}
# "muster postgres nats" CPU seconds now.
snapshot() {
    printf '%s %s %s\n' "$(cpu_of 0 "${NODE_PIDS[@]}")" "$(postgres_cpu)" "$(cpu_of 0 "$NATS_PID")"
}
# Print and record µs per operation for each class between two snapshots.
report() {
    local phase=$1 ops=$2 before=$3 after=$4 n=$5
    read -r m0 p0 s0 <<<"$before"
    read -r m1 p1 s1 <<<"$after"
    if [[ $ops == 0 ]]; then
        bench_warn "$phase at $n node(s): no operation completed"
        return
    fi
    bench_figure "$phase at $n node(s): muster µs/op" "µs" 0 "" "" "" "$(bench_calc "($m1 - $m0) * 1e6 / $ops")"
    bench_figure "$phase at $n node(s): postgres µs/op" "µs" 0 "" "" "" "$(bench_calc "($p1 - $p0) * 1e6 / $ops")"
    bench_figure "$phase at $n node(s): nats-server µs/op" "µs" 0 "" "" "" "$(bench_calc "($s1 - $s0) * 1e6 / $ops")"
    bench_note "$phase at $n node(s): $ops operations"
}

# Run one fleet per node at once (devices split by node: prefix c<n>-<i>-); prints the sum of
# KEY over their JSON reports.
fleets() {
    local key=$1 tag=$2
    shift 2
    local i pids=() out sum=0 per=$((DEVICES / N))
    for i in $(seq "$N"); do
        out=$WORK/$tag-$N-$i.json
        "$MUSTER" device fleet "${tls[@]}" --devices "$per" --concurrency "$CONCURRENCY" \
            --prefix "c$N-$i-" --provisioning-host "localhost:${MQTT_PORTS[$((i - 1))]}" \
            --id-scope "$SCOPE" --hub-host localhost --hub-port "${MQTT_PORTS[$((i - 1))]}" \
            "$@" --json >"$out" 2>"${out%.json}.err" &
        pids+=($!)
        bench_track_pid "${pids[-1]}"
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || bench_warn "fleet $((i + 1)) exited $?; see $WORK/$tag-$N-$((i + 1)).err"
        bench_untrack_pid "${pids[$i]}"
    done
    for i in $(seq "$N"); do
        sum=$((sum + $(bench_get "$WORK/$tag-$N-$i.json" "$key" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}

for N in $NODES; do
    bench_require_uint N "$N"
    db="muster_bench_cluster_$$_$N"
    psql "$BENCH_POSTGRES" -qc "CREATE DATABASE $db"
    store="${BENCH_POSTGRES%/*}/$db"
    NODE_PIDS=()
    MQTT_PORTS=()
    HTTPS_PORTS=()
    for i in $(seq "$N"); do
        BENCH_SERVE_ARGS=(--store "$store" --bus "$BENCH_NATS" --node-id "b$$-$N-$i")
        bench_start_server "$WORK/n$N-$i" "$WORK/n$N-$i.log"
        NODE_PIDS+=("$SERVER_PID")
        MQTT_PORTS+=("$MQTT_PORT")
        HTTPS_PORTS+=("$HTTPS_PORT")
    done
    CERTS=$WORK/certs-$N
    bench_certs "$CERTS"
    bench_enroll "$WORK/n$N-1" "$CERTS"
    SCOPE=$(bench_id_scope "$WORK/n$N-1")
    tls=(--ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" --trust "$WORK/n$N-1/tls/ca.pem"
        --identity-dir "$WORK/identities-$N")
    bench_log "$N node(s) up (pids ${NODE_PIDS[*]}), database $db"

    # Once per node count: a device registers once.
    {
        before=$(snapshot)
        registered=$(fleets provisioned register --duration 0s)
        report "registration + first connect" "$registered" "$before" "$(snapshot)" "$N"

        before=$(snapshot)
        connected=$(fleets connected connect --no-provision --duration 0s)
        report "connect + disconnect" "$connected" "$before" "$(snapshot)" "$N"

        before=$(snapshot)
        acked=$(fleets messagesAcked d2c --no-provision --duration "${DURATION}s" \
            --telemetry-interval 0s --qos 1 --in-flight "$IN_FLIGHT" --payload-bytes 256)
        report "D2C QoS 1 (256 B)" "$acked" "$before" "$(snapshot)" "$N"

        # Devices connected and idle on every node; patches through node 1's REST.
        prefixes=$(for i in $(seq "$N"); do printf 'c%s-%s-,' "$N" "$i"; done)
        fleets connected idle --no-provision --duration "$((DURATION + 8))s" --telemetry-interval 3600s >/dev/null &
        idle_pid=$!
        sleep 5
        before=$(snapshot)
        python3 "$(dirname "${BASH_SOURCE[0]}")/service_load.py" "$WORK/n$N-1" twin "$DURATION" \
            "${prefixes%,}" "$((DEVICES / N))" "$PATCH_WORKERS" >"$WORK/twin-$N.json"
        after=$(snapshot)
        patched=$(bench_get "$WORK/twin-$N.json" answers.200 2>/dev/null || echo 0)
        report "desired patch via node 1" "$patched" "$before" "$after" "$N"
        wait "$idle_pid" || true
    }

    for pid in "${NODE_PIDS[@]}"; do
        bench_stop_pid "$pid"
    done
    psql "$BENCH_POSTGRES" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
