#!/usr/bin/env python3
"""Service-side load for bench/bounded-memory.sh, with the hub owner's policy of DATA_DIR.

    service_load.py DATA_DIR stall-stream SECONDS N      N event-stream readers that read nothing
    service_load.py DATA_DIR slow-stream SECONDS RATE    one reader that takes RATE events/s
    service_load.py DATA_DIR c2d SECONDS PREFIX COUNT    C2D sends to PREFIX0..PREFIX{COUNT-1}, 8 at once
    service_load.py DATA_DIR methods SECONDS PREFIX COUNT CONCURRENCY
                                                          direct-method calls (5 s timeout) to them
    service_load.py DATA_DIR twin SECONDS PREFIXES COUNT CONCURRENCY
                                                          desired-property patches to PREFIXi0..COUNT-1
                                                          (PREFIXES comma-separated), at random

Each mode runs for SECONDS and prints one JSON object: what it did and the answers by status.
"""
import base64
import collections
import hashlib
import hmac
import http.client
import json
import random
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse


def token(host, key_name, key, ttl=7200):
    expiry = int(time.time()) + ttl
    sr = urllib.parse.quote(host, safe="")
    digest = hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={key_name}"


class Hub:
    def __init__(self, data_dir):
        endpoint = json.load(open(f"{data_dir}/endpoint.json"))
        state = json.load(open(f"{data_dir}/state.json"))
        owner = next(p for p in state["policies"] if p["name"] == "iothubowner")
        self.port = endpoint["httpsPort"]
        self.ca = f"{data_dir}/tls/ca.pem"
        self.auth = token("localhost", owner["name"], owner["primaryKey"])

    def tls(self, rcvbuf=None):
        ctx = ssl.create_default_context(cafile=self.ca)
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.connect(("127.0.0.1", self.port))
        return ctx.wrap_socket(raw, server_hostname="localhost")

    def connection(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        return http.client.HTTPSConnection("localhost", self.port, context=ctx, timeout=30)

    def open_stream(self, rcvbuf=None):
        s = self.tls(rcvbuf)
        s.sendall(
            (
                "GET /messages/events?from=earliest HTTP/1.1\r\n"
                f"Host: localhost:{self.port}\r\nAuthorization: {self.auth}\r\n\r\n"
            ).encode()
        )
        return s


# What a mode has done so far: printed at the end, or when SIGTERM stops it early.
PROGRESS = {}


class Stopped(Exception):
    pass


def stall_stream(hub, seconds, n):
    socks = [hub.open_stream(rcvbuf=4096) for _ in range(n)]
    # Read the status line only, then nothing more.
    for s in socks:
        s.recv(64)
    time.sleep(seconds)
    return {"mode": "stall-stream", "readers": n}


def slow_stream(hub, seconds, rate):
    s = hub.open_stream(rcvbuf=4096)
    f = s.makefile("rb")
    end = time.monotonic() + seconds
    PROGRESS.update({"mode": "slow-stream", "eventsRead": 0})
    while time.monotonic() < end:
        line = f.readline()
        if not line:
            break
        if line.startswith(b"{"):
            PROGRESS["eventsRead"] += 1
            time.sleep(1.0 / rate)
    return PROGRESS


def parallel(hub, seconds, workers, make_request):
    statuses = collections.Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def work():
        c = hub.connection()
        while time.monotonic() < end:
            method, path, body, headers = make_request()
            headers = dict(headers, Authorization=hub.auth)
            try:
                c.request(method, path, body=body, headers=headers)
                r = c.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                c.close()
                c = hub.connection()
            with lock:
                statuses[str(status)] += 1

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(statuses)


def main():
    data_dir, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    hub = Hub(data_dir)

    def stop(*_):
        raise Stopped()

    signal.signal(signal.SIGTERM, stop)
    try:
        run(hub, mode, seconds)
    except Stopped:
        print(json.dumps(dict(PROGRESS, stoppedEarly=True)), flush=True)


def run(hub, mode, seconds):
    if mode == "stall-stream":
        out = stall_stream(hub, seconds, int(sys.argv[4]))
    elif mode == "slow-stream":
        out = slow_stream(hub, seconds, float(sys.argv[4]))
    elif mode == "c2d":
        prefix, count = sys.argv[4], int(sys.argv[5])
        n = iter(range(10**12))

        def c2d():
            i = next(n)
            return ("POST", f"/devices/{prefix}{i % count}/messages/devicebound", b"x" * 200,
                    {"iothub-messageid": f"m{i}"})

        out = {"mode": "c2d", "answers": parallel(hub, seconds, 8, c2d)}
    elif mode == "methods":
        prefix, count, concurrency = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])

        def method():
            body = json.dumps({"methodName": "noAnswer", "responseTimeoutInSeconds": 5, "payload": {"pad": "x" * 200}})
            return ("POST", f"/twins/{prefix}{random.randrange(count)}/methods", body,
                    {"Content-Type": "application/json"})

        out = {"mode": "methods", "answers": parallel(hub, seconds, concurrency, method)}
    elif mode == "twin":
        prefixes, count, concurrency = sys.argv[4].split(","), int(sys.argv[5]), int(sys.argv[6])
        n = iter(range(10**12))

        def patch():
            i = next(n)
            device = f"{random.choice(prefixes)}{random.randrange(count)}"
            body = json.dumps({"properties": {"desired": {"benchPatch": i}}})
            return ("PATCH", f"/twins/{device}", body, {"Content-Type": "application/json"})

        out = {"mode": "twin", "answers": parallel(hub, seconds, concurrency, patch)}
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
