#!/usr/bin/env python3
"""Drive the official `azure-iot-hub` service SDK (unmodified) through the lab operator's
registry and twin actions against muster; print ONE JSON line (see README.md).

Trust: set REQUESTS_CA_BUNDLE to the server's tls/ca.pem (requests reads it).
"""
import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connection-string", required=True)
    p.add_argument("--device-id", required=True)
    p.add_argument("--existing-device", help="a device provisioned by DPS to read and edit")
    a = p.parse_args()
    out = {"ok": False}
    step = "import"
    try:
        from azure.iot.hub import IoTHubRegistryManager
        from azure.iot.hub.models import Twin, TwinProperties

        step = "connect"
        rm = IoTHubRegistryManager.from_connection_string(a.connection_string)
        step = "create"
        created = rm.create_device_with_sas(a.device_id, "", "", "enabled")
        out["created"] = {"deviceId": created.device_id, "status": created.status, "authType": created.authentication.type,
                          "hasKey": bool(created.authentication.symmetric_key.primary_key)}
        step = "get"
        got = rm.get_device(a.device_id)
        out["got"] = {"deviceId": got.device_id, "etag": got.etag}
        step = "list"
        out["listed"] = sorted(d.device_id for d in rm.get_devices(100))
        step = "update_twin"
        twin = rm.get_twin(a.device_id)
        patch = Twin(properties=TwinProperties(desired={"telemetryDelay": "2"}), tags={"site": "lab"})
        updated = rm.update_twin(a.device_id, patch, twin.etag)
        out["updatedTwin"] = {"desired": updated.properties.desired.get("telemetryDelay"),
                              "desiredVersion": updated.properties.desired.get("$version"),
                              "tags": updated.tags, "version": updated.version}
        step = "replace_twin"
        replaced = rm.replace_twin(a.device_id, Twin(properties=TwinProperties(desired={"mode": "eco"}), tags={"floor": 1}), updated.etag)
        out["replacedTwin"] = {"desired": {k: v for k, v in replaced.properties.desired.items() if not k.startswith("$")}, "tags": replaced.tags}
        if a.existing_device:
            step = "existing_twin"
            t = rm.get_twin(a.existing_device)
            out["existing"] = {"telemetryDelay": t.properties.desired.get("telemetryDelay"), "authType": t.authentication_type}
            step = "existing_update"
            u = rm.update_twin(a.existing_device, Twin(properties=TwinProperties(desired={"telemetryDelay": "2"})), t.etag)
            out["existing"]["updatedTelemetryDelay"] = u.properties.desired.get("telemetryDelay")
        step = "delete"
        rm.delete_device(a.device_id)
        step = "get_after_delete"
        try:
            rm.get_device(a.device_id)
            out["getAfterDelete"] = "found"
        except Exception as e:  # noqa: BLE001 - reporting the SDK's error type is the point
            out["getAfterDelete"] = type(e).__name__
            status = getattr(getattr(e, "response", None), "status_code", None)
            out["getAfterDeleteStatus"] = status
        out["ok"] = True
    except Exception as e:  # noqa: BLE001
        out.update({"step": step, "error": type(e).__name__, "message": str(e)[:500]})
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
