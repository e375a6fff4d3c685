#!/usr/bin/env python3
"""Send a cloud-to-device message with the official `azure-iot-hub` SDK (unmodified):
`IoTHubRegistryManager.send_c2d_message`, which speaks AMQP 1.0 through uamqp (SASL MSSBCBS,
CBS put-token, a sender on amqps://{host}/messages/devicebound) on port 5671, or AMQP over
WebSockets on 443 (`/$servicebus/websocket/`) with --websockets.

uamqp trusts only certifi's bundle and the SDK has no option for another; the test CA is
handed to it by replacing `certifi.where` before the first connection (the SDK is untouched).
Prints ONE JSON line: {"ok": true, "messageId": …} or {"ok": false, "error": …, "message": …}.
"""
import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connection-string", required=True, help="a hub policy connection string")
    p.add_argument("--trust", required=True, help="the server's CA (PEM)")
    p.add_argument("--device-id", required=True)
    p.add_argument("--message-id", required=True)
    p.add_argument("--data", default="hello")
    p.add_argument("--websockets", action="store_true")
    a = p.parse_args()
    out = {"ok": False}
    step = "import"
    try:
        import certifi

        certifi.where = lambda: a.trust
        from azure.iot.hub import IoTHubRegistryManager
        from uamqp import TransportType

        step = "create"
        transport = TransportType.AmqpOverWebsocket if a.websockets else TransportType.Amqp
        manager = IoTHubRegistryManager.from_connection_string(a.connection_string, transport_type=transport)
        step = "send"
        manager.send_c2d_message(
            a.device_id,
            a.data,
            properties={"messageId": a.message_id, "contentType": "text/plain", "priority": "high"},
        )
        out.update({"ok": True, "messageId": a.message_id})
        try:
            manager.amqp_svc_client.disconnect_sync()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    except Exception as e:  # noqa: BLE001 - the error type is the report
        out.update({"step": step, "error": type(e).__name__, "message": str(e)[:300]})
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
