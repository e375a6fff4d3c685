#!/usr/bin/env python3
"""Cloud-to-device messages, direct methods and a reconnect with the official `azure-iot-device`
SDK (unmodified) against a muster hub. Prints ONE JSON line on stdout (see README.md).

Authentication: X.509 (`--host --device-id --cert --key`) or SAS (`--connection-string` of a
symmetric-key device). `--trust` is the server's CA (passed as `server_verification_cert`).

Flow, with markers on stderr (each alone on its line) for the driving test:

  connect, enable C2D and methods              -> "ready-1"
  phase 1: wait for N1 C2D messages and M1 method calls (`--expect 1,1,1,1` = N1,M1,N2,M2),
           each method answered 200 with {"phase":1,"method":<name>,"echo":<payload>}
  client.disconnect()                          -> "offline"
  with --offline-gate: wait for one stdin line (`reconnect`, or EOF) before going on
  client.connect()                             -> "ready-2"
  phase 2: wait for N2 C2D messages and M2 method calls (answered with "phase":2)
  shutdown, print the JSON line.

The SDK connects with CleanSession=0 and does NOT subscribe again after `connect()`, so anything
received in phase 2 arrived through the subscriptions that the server kept for the session.
Every wait is bounded by `--wait` seconds; the whole run by `--timeout`.

Result: {"ok": bool, "auth": "x509"|"sas", "messages": [{"phase", "data", "customProperties",
"messageId", "correlationId", "contentType", "contentEncoding", "ack"}...], "methods": [{"phase",
"name", "payload", "requestId"}...], "steps": [...], "error"?, "message"?, "step"?}
"""
import argparse
import json
import select
import sys
import threading

from sdk_harness import emit_and_exit, error_json


def parse_expect(text):
    parts = [int(x) for x in text.split(",")]
    if len(parts) != 4 or any(n < 0 for n in parts):
        raise argparse.ArgumentTypeError("--expect is C2D1,METHODS1,C2D2,METHODS2 (four counts)")
    return parts


def marker(name):
    print(name, file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connection-string", help="HostName=..;DeviceId=..;SharedAccessKey=.. (SAS)")
    p.add_argument("--host", help="hub host name (X.509; must match the server certificate)")
    p.add_argument("--device-id", help="device id (X.509)")
    p.add_argument("--cert", help="client certificate (chain) PEM (X.509)")
    p.add_argument("--key", help="client private key PEM (X.509)")
    p.add_argument("--trust", required=True, help="PEM with the server's CA")
    p.add_argument("--expect", type=parse_expect, default=[1, 1, 1, 1],
                   help="C2D1,METHODS1,C2D2,METHODS2: what each phase waits for (default 1,1,1,1)")
    p.add_argument("--offline-gate", action="store_true",
                   help="after 'offline', wait for a stdin line before reconnecting")
    p.add_argument("--wait", type=float, default=30.0, help="bound of each wait in seconds (default 30)")
    p.add_argument("--timeout", type=float, default=150.0, help="bound of the whole run (default 150)")
    p.add_argument("--verbose", action="store_true", help="SDK debug logging on stderr")
    a = p.parse_args()
    x509 = all([a.host, a.device_id, a.cert, a.key])
    if x509 == bool(a.connection_string):
        p.error("give either --connection-string or all of --host --device-id --cert --key")

    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The real stdout is reserved for the result line (sdk_harness keeps a handle on it).
    sys.stdout = sys.stderr

    out = {"ok": False, "auth": "x509" if x509 else "sas", "messages": [], "methods": [], "steps": []}
    state = {"phase": 1, "step": "import"}
    cond = threading.Condition()

    def step(name):
        state["step"] = name
        out["steps"].append(name)

    def counts(phase):
        return (sum(1 for m in out["messages"] if m["phase"] == phase),
                sum(1 for m in out["methods"] if m["phase"] == phase))

    def wait_phase(phase, want_c2d, want_methods):
        with cond:
            done = cond.wait_for(lambda: counts(phase)[0] >= want_c2d and counts(phase)[1] >= want_methods,
                                 timeout=a.wait)
        if not done:
            got = counts(phase)
            raise TimeoutError("phase {}: got {} C2D message(s) and {} method call(s) within {:g}s, "
                               "expected {} and {}".format(phase, got[0], got[1], a.wait,
                                                           want_c2d, want_methods))

    def worker():
        try:
            from azure.iot.device import IoTHubDeviceClient, MethodResponse, X509

            step("create")
            with open(a.trust, encoding="utf-8") as f:
                trust = f.read()
            if x509:
                client = IoTHubDeviceClient.create_from_x509_certificate(
                    x509=X509(a.cert, a.key), hostname=a.host, device_id=a.device_id,
                    server_verification_cert=trust)
            else:
                client = IoTHubDeviceClient.create_from_connection_string(
                    a.connection_string, server_verification_cert=trust)

            def on_message(msg):
                data = msg.data
                if isinstance(data, (bytes, bytearray)):
                    data = bytes(data).decode("utf-8", errors="replace")
                with cond:
                    out["messages"].append({
                        "phase": state["phase"],
                        "data": data,
                        "customProperties": dict(msg.custom_properties),
                        "messageId": msg.message_id,
                        "correlationId": msg.correlation_id,
                        "contentType": msg.content_type,
                        "contentEncoding": msg.content_encoding,
                        "ack": msg.ack,
                    })
                    cond.notify_all()

            def on_method(req):
                phase = state["phase"]
                resp = MethodResponse.create_from_method_request(
                    req, 200, {"phase": phase, "method": req.name, "echo": req.payload})
                client.send_method_response(resp)
                with cond:
                    out["methods"].append({"phase": phase, "name": req.name, "payload": req.payload,
                                           "requestId": req.request_id})
                    cond.notify_all()

            step("connect-1")
            client.connect()
            # Each handler enables its feature: one SUBSCRIBE each, acknowledged before return.
            step("subscribe")
            client.on_message_received = on_message
            client.on_method_request_received = on_method
            marker("ready-1")
            step("phase-1")
            wait_phase(1, a.expect[0], a.expect[1])
            step("disconnect")
            client.disconnect()
            with cond:
                state["phase"] = 2
            marker("offline")
            if a.offline_gate:
                step("offline-gate")
                readable, _, _ = select.select([sys.stdin], [], [], a.wait)
                if not readable:
                    raise TimeoutError("no line on stdin within {:g}s while offline".format(a.wait))
                out["gate"] = sys.stdin.readline().strip() or "eof"
            step("connect-2")
            client.connect()
            marker("ready-2")
            step("phase-2")
            wait_phase(2, a.expect[2], a.expect[3])
            step("shutdown")
            client.shutdown()
            out["ok"] = True
            emit_and_exit(out, 0)
        except BaseException as e:  # noqa: B902 - the error is the report
            out.update(error_json(e))
            out["ok"] = False
            out["step"] = state["step"]
            emit_and_exit(out, 1)

    t = threading.Thread(target=worker, name="hub-device-flows", daemon=True)
    t.start()
    t.join(a.timeout)
    with cond:  # no handler appends while the result is written
        out.update({"ok": False, "error": "Timeout", "step": state["step"],
                    "message": "the run did not finish within {:g}s".format(a.timeout)})
        emit_and_exit(out, 1)


if __name__ == "__main__":
    main()
