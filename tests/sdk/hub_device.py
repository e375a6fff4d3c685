#!/usr/bin/env python3
"""The lab device's twin flow with the official `azure-iot-device` SDK (unmodified) against a
muster hub: connect with an X.509 certificate, read the twin, report `telemetryDelay`, then wait
for a desired-property patch. Prints ONE JSON line (see README.md)."""
import argparse
import json
import sys
import threading


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--device-id", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--trust", required=True)
    p.add_argument("--wait", type=float, default=20.0, help="seconds to wait for a desired patch")
    p.add_argument("--websockets", action="store_true", help="MQTT over WebSockets on port 443")
    a = p.parse_args()
    out = {"ok": False}
    step = "import"
    try:
        from azure.iot.device import IoTHubDeviceClient, Message, X509

        step = "create"
        with open(a.trust, encoding="utf-8") as f:
            trust = f.read()
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=X509(a.cert, a.key),
            hostname=a.host,
            device_id=a.device_id,
            server_verification_cert=trust,
            websockets=a.websockets,
        )
        got_patch = threading.Event()
        patches = []

        def on_patch(patch):
            # The SDK may first replay the desired section it read at connect; wait for a
            # patch beyond version 1 (the enrollment's initial twin).
            patches.append(patch)
            if patch.get("$version", 0) > 1:
                got_patch.set()

        client.on_twin_desired_properties_patch_received = on_patch
        step = "connect"
        client.connect()
        step = "get_twin"
        twin = client.get_twin()
        out["desired"] = twin.get("desired", {})
        step = "patch_reported"
        client.patch_twin_reported_properties({"telemetryDelay": 1})
        step = "send_message"
        msg = Message(json.dumps({"temperature": 31.2, "humidity": 70.1}))
        msg.content_type = "application/json"
        msg.content_encoding = "utf-8"
        msg.custom_properties["temperatureAlert"] = "true"
        client.send_message(msg)
        print("ready", file=sys.stderr, flush=True)
        step = "wait_patch"
        got_patch.wait(a.wait)
        out["patches"] = patches
        client.shutdown()
        out["ok"] = got_patch.is_set()
        if not got_patch.is_set():
            out["error"] = "no desired patch received"
    except Exception as e:  # noqa: BLE001 - the error type is the report
        out.update({"step": step, "error": type(e).__name__, "message": str(e)[:300]})
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
