"""Shared plumbing for the provision_*.py drivers (not a test itself).

Contract (one JSON line on stdout, nothing else is ever written to stdout):

  success (exit 0):
    {"ok": true, "status": <result.status>, "deviceId": ..., "assignedHub": ...,
     "substatus": ..., "operationId": ..., "payload": <returned payload or null>}
  failure (exit 1):
    {"ok": false, "error": <exception type name>, "message": str(e),
     "cause": "<Type>: <str>" of e.__cause__ (or e.__context__) or null,
     "chain": ["<Type>: <str>", ...]   # full cause chain, outermost first}
  timeout (exit 1):
    {"ok": false, "error": "Timeout", "message": ..., "cause": null, "chain": []}

SDK logging goes to stderr (WARNING by default, DEBUG with --verbose).
"""

import argparse
import json
import logging
import os
import sys
import threading

# The real stdout, reserved for the single result line. run() points
# sys.stdout at stderr so nothing else (SDK, paho, warnings) can pollute it.
_STDOUT = sys.stdout

_emit_lock = threading.Lock()
_emitted = False


def emit_and_exit(obj, code):
    """Write exactly one JSON line to the real stdout and hard-exit.

    os._exit is deliberate: the SDK leaves non-daemon pipeline/paho threads
    behind on failure, which would otherwise keep the process alive."""
    global _emitted
    with _emit_lock:
        if not _emitted:
            _emitted = True
            _STDOUT.write(json.dumps(obj, sort_keys=False) + "\n")
            _STDOUT.flush()
        sys.stderr.flush()
        os._exit(code)


def _describe(e):
    return "{}: {}".format(type(e).__name__, e)


def error_json(e):
    chain = []
    seen = set()
    cur = e.__cause__ or e.__context__
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(_describe(cur))
        cur = cur.__cause__ or cur.__context__
    return {
        "ok": False,
        "error": type(e).__name__,
        "message": str(e),
        "cause": chain[0] if chain else None,
        "chain": chain,
    }


def result_json(result):
    state = getattr(result, "registration_state", None)
    payload = None
    if state is not None:
        try:
            payload = json.loads(state.response_payload)
        except Exception:
            payload = None
    return {
        "ok": True,
        "status": getattr(result, "status", None),
        "deviceId": getattr(state, "device_id", None),
        "assignedHub": getattr(state, "assigned_hub", None),
        "substatus": getattr(state, "sub_status", None),
        "operationId": getattr(result, "operation_id", None),
        "payload": payload,
    }


def common_parser(description):
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", required=True,
                   help="DPS hostname (SDK always uses MQTT/TLS1.2 on port 8883; "
                        "must match the server certificate's SAN)")
    p.add_argument("--id-scope", required=True, help="ID scope")
    p.add_argument("--registration-id", required=True, help="registration ID")
    p.add_argument("--trust", metavar="PEM",
                   help="PEM file with the server's CA; its contents are passed as "
                        "server_verification_cert (default: system roots)")
    p.add_argument("--payload", metavar="JSON",
                   help="JSON value sent as the registration request payload")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="overall deadline in seconds (default 60)")
    p.add_argument("--verbose", action="store_true", help="SDK debug logging to stderr")
    p.add_argument("--websockets", action="store_true",
                   help="MQTT over WebSockets (wss://HOST:443/$iothub/websocket)")
    return p


def client_kwargs(args):
    """kwargs shared by both create_from_* factories."""
    kwargs = {"websockets": True} if getattr(args, "websockets", False) else {}
    if args.trust:
        with open(args.trust, "r", encoding="utf-8") as f:
            kwargs["server_verification_cert"] = f.read()
    return kwargs


def run(args, make_client):
    """Build the client with make_client(), register, print the result.

    Everything (imports included) runs on a daemon worker thread so that the
    --timeout bound holds no matter where the SDK blocks."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.stdout = sys.stderr
    outcome = {}

    def worker():
        try:
            payload = json.loads(args.payload) if args.payload is not None else None
            client = make_client()
            if payload is not None:
                client.provisioning_payload = payload
            outcome["result"] = client.register()
        except BaseException as e:  # noqa: B902 - report everything
            outcome["error"] = e

    t = threading.Thread(target=worker, name="provision", daemon=True)
    t.start()
    t.join(args.timeout)
    if t.is_alive():
        emit_and_exit({
            "ok": False,
            "error": "Timeout",
            "message": "no registration result within {:g}s".format(args.timeout),
            "cause": None,
            "chain": [],
        }, 1)
    if "error" in outcome:
        emit_and_exit(error_json(outcome["error"]), 1)
    emit_and_exit(result_json(outcome.get("result")), 0)
