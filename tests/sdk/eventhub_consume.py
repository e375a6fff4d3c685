#!/usr/bin/env python3
"""Read muster's built-in endpoint with the official, unmodified `azure-eventhub` consumer
(`EventHubConsumerClient`, its pure-Python AMQP stack), from the `eventHubsConnectionString`
that `muster info --json` prints.

  --properties           print the hub's and every partition's properties, then exit
  --count N              receive until N events arrived (from every partition, or --partition)
  --start S              earliest | latest | seq:N | offset:X | time:MS (Unix milliseconds)
  --inclusive            the start position itself is included
  --owner-level E        an epoch receiver
  --hold SECONDS         keep receiving this long after the count was reached (epoch tests)

Prints ONE JSON line: {"ok": true, "events": [...], "properties": {...}, "errors": [...]} or
{"ok": false, "error": ..., "message": ...}. Each event: partition, sequenceNumber, offset,
enqueuedTime (ms), body (text), properties, systemProperties (text values), messageId,
contentType.
"""
import argparse
import datetime
import json
import sys
import threading
import time


def text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, datetime.datetime):
        return int(v.timestamp() * 1000)
    if isinstance(v, dict):
        return {text(k): text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [text(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def position(start):
    if start == "earliest":
        return "-1"
    if start == "latest":
        return "@latest"
    kind, _, value = start.partition(":")
    if kind == "seq":
        return int(value)
    if kind == "offset":
        return value
    if kind == "time":
        return datetime.datetime.fromtimestamp(int(value) / 1000, tz=datetime.timezone.utc)
    raise SystemExit(f"unknown start {start}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connection-string", required=True)
    p.add_argument("--trust", required=True, help="the server's CA (PEM)")
    p.add_argument("--consumer-group", default="$Default")
    p.add_argument("--partition")
    p.add_argument("--start", default="earliest")
    p.add_argument("--inclusive", action="store_true")
    p.add_argument("--owner-level", type=int)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--hold", type=float, default=0)
    p.add_argument("--properties", action="store_true")
    a = p.parse_args()
    out = {"ok": False}
    try:
        from azure.eventhub import EventHubConsumerClient

        client = EventHubConsumerClient.from_connection_string(
            a.connection_string, consumer_group=a.consumer_group, connection_verify=a.trust
        )
        if a.properties:
            hub = client.get_eventhub_properties()
            parts = {pid: client.get_partition_properties(pid) for pid in hub["partition_ids"]}
            client.close()
            out = {"ok": True, "properties": {"hub": text(hub), "partitions": text(parts)}}
            print(json.dumps(out))
            return 0

        events, errors = [], []
        done = threading.Event()
        lock = threading.Lock()

        def on_event(partition_context, event):
            if event is None:
                return
            with lock:
                events.append(
                    {
                        "partition": partition_context.partition_id,
                        "sequenceNumber": event.sequence_number,
                        "offset": event.offset,
                        "enqueuedTime": text(event.enqueued_time),
                        "body": event.body_as_str(),
                        "properties": text(event.properties),
                        "systemProperties": text(event.system_properties),
                        "messageId": text(event.message_id),
                        "contentType": text(event.content_type),
                    }
                )
                if len(events) >= a.count:
                    done.set()

        def on_error(partition_context, error):
            pid = partition_context.partition_id if partition_context else None
            errors.append({"partition": pid, "error": type(error).__name__, "message": str(error)})

        kwargs = {
            "on_event": on_event,
            "on_error": on_error,
            "starting_position": position(a.start),
            "starting_position_inclusive": a.inclusive,
        }
        if a.partition is not None:
            kwargs["partition_id"] = a.partition
        if a.owner_level is not None:
            kwargs["owner_level"] = a.owner_level
        worker = threading.Thread(target=client.receive, kwargs=kwargs, daemon=True)
        worker.start()
        done.wait(a.timeout)
        if a.hold:
            time.sleep(a.hold)
        client.close()
        worker.join(10)
        with lock:
            out = {"ok": len(events) >= a.count, "events": events, "errors": errors}
            if not out["ok"]:
                out["error"] = "Timeout"
                out["message"] = f"{len(events)} of {a.count} events in {a.timeout} s"
    except Exception as e:  # noqa: BLE001 - the driver reports every failure as JSON
        out = {"ok": False, "error": type(e).__name__, "message": str(e)}
    print(json.dumps(out))
    sys.stdout.flush()
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
