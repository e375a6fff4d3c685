#!/usr/bin/env bash
# Cold start: from exec of `muster serve` on an existing data directory to the server being
# reachable — endpoint.json written AND the MQTT port accepting a TCP connection.
#
#   REPEAT=3 COLD_DEVICES=0 bench/cold-start.sh
#
# The data directory is created by a first start that is not timed (it generates the trust
# root, server certificate, keys and databases); with COLD_DEVICES > 0 that first start also
# provisions that many devices, so the timed starts open a populated registry. Each timed start
# deletes endpoint.json first; the clock (monotonic, in a python3 parent that polls every
# 0.5 ms) starts just before the exec. Also shown: SIGTERM to exit, with no connections.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COLD_DEVICES=${COLD_DEVICES:-0}
[[ $COLD_DEVICES =~ ^[0-9]+$ ]] || bench_die "COLD_DEVICES must be a number (got '$COLD_DEVICES')"

bench_setup cold-start
bench_raise_nofile
bench_header "cold start" "COLD_DEVICES=$COLD_DEVICES"

DATA=$WORK/data
bench_start_server "$DATA" "$WORK/server.log"
if ((COLD_DEVICES > 0)); then
    CERTS=$WORK/certs
    bench_certs "$CERTS"
    bench_enroll "$DATA" "$CERTS"
    SCOPE=$(bench_id_scope "$DATA")
    bench_log "provisioning $COLD_DEVICES devices into the data directory"
    bench_fleet "$WORK/provision.json" --devices "$COLD_DEVICES" --concurrency 256 --prefix cold- \
        --ca-cert "$CERTS/root-ca.pem" --ca-key "$CERTS/root-ca.key.pem" \
        --provisioning-host "localhost:$MQTT_PORT" --id-scope "$SCOPE" --trust "$DATA/tls/ca.pem" \
        --duration 0s --source-addresses 4
fi
bench_stop_server

start_ms=() stop_ms=()
for ((r = 1; r <= REPEAT; r++)); do
    v=$(MUSTER_LOG=${MUSTER_LOG:-warn} RUST_LOG=${RUST_LOG:-warn} python3 - "$MUSTER" "$DATA" "$WORK/server.log" <<'EOF'
import json, os, signal, socket, subprocess, sys, time
muster, data, log = sys.argv[1:4]
endpoint = os.path.join(data, "endpoint.json")
try:
    os.remove(endpoint)
except FileNotFoundError:
    pass
with open(log, "ab") as out:
    began = time.monotonic()
    server = subprocess.Popen(
        [muster, "serve", "--data-dir", data, "--mqtt-port", "0", "--amqp-port", "0", "--https-port", "0", "--portal-port", "0"],
        stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        port = host = None
        while True:
            if server.poll() is not None:
                sys.exit(f"muster serve exited with {server.returncode} during start; see {log}")
            if time.monotonic() - began > 60:
                sys.exit("muster serve did not become reachable within 60 s")
            if port is None:
                try:
                    with open(endpoint, encoding="utf-8") as f:
                        ep = json.load(f)
                    port, host = int(ep["mqttPort"]), ep.get("bind") or "127.0.0.1"
                    if host in ("0.0.0.0", "::"):
                        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
                except (OSError, ValueError, KeyError):
                    time.sleep(0.0005)
                    continue
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.0005)
        ready = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        stopped = time.monotonic()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
print(f"{(ready - began) * 1000:.3f}\t{(stopped - ready) * 1000:.3f}")
EOF
    )
    IFS=$'\t' read -r a b <<<"$v"
    start_ms+=("$a") stop_ms+=("$b")
    bench_log "run $r/$REPEAT: reachable after $a ms, stopped $b ms after SIGTERM"
done

echo
echo "Results ($REPEAT starts; median, min and max):"
bench_figure "cold start to MQTT port accepting" "ms" 1 "<=" 200 "≤ 200 ms" "${start_ms[@]}"
bench_figure "SIGTERM to exit (no connections)" "ms" 1 "" "" "" "${stop_ms[@]}"
bench_note "existing data directory with $COLD_DEVICES provisioned devices; timed from exec to endpoint.json written and a TCP connection accepted on the MQTT port"
