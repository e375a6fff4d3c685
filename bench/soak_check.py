#!/usr/bin/env python3
"""Check a soak's ledger against muster's event stream: every acknowledged message is readable.

    soak_check.py DATA_DIR LEDGER RUN_ID

Reads `GET /messages/events?from=earliest` (newline-delimited JSON) over HTTPS with the hub
owner's SAS token from `DATA_DIR/state.json`, keeps the events whose `soakRun` property is
RUN_ID, and checks that for each device of LEDGER every sequence number below `sent`, except
the ones listed as `unacknowledged`, was read. Stops when all are found, or after 30 s without a
new event. Prints one JSON object: expected, found, missing, duplicates, events/s.
"""
import json
import socket
import ssl
import sys
import time

from service_load import token


def main():
    data_dir, ledger_path, run_id = sys.argv[1:4]
    endpoint = json.load(open(f"{data_dir}/endpoint.json"))
    state = json.load(open(f"{data_dir}/state.json"))
    owner = next(p for p in state["policies"] if p["name"] == "iothubowner")
    port = endpoint["httpsPort"]
    host = "localhost"

    expected = {}
    for line in open(ledger_path):
        d = json.loads(line)
        skip = set(d["unacknowledged"])
        expected[d["deviceId"]] = {s for s in range(d["sent"]) if s not in skip}
    want = sum(len(v) for v in expected.values())

    ctx = ssl.create_default_context(cafile=f"{data_dir}/tls/ca.pem")
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=host)
    sock.settimeout(30)
    auth = token(host, owner["name"], owner["primaryKey"])
    sock.sendall(
        (
            "GET /messages/events?from=earliest HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nAuthorization: {auth}\r\nAccept: application/x-ndjson\r\n\r\n"
        ).encode()
    )
    f = sock.makefile("rb")
    status = f.readline().decode().strip()
    if " 200 " not in status + " ":
        sys.exit(f"event stream: {status}")
    chunked = False
    while True:
        h = f.readline().decode().strip()
        if not h:
            break
        if h.lower().startswith("transfer-encoding:") and "chunked" in h.lower():
            chunked = True

    found = 0
    duplicates = 0
    read = 0
    start = time.monotonic()
    buf = b""

    def lines():
        nonlocal buf
        while True:
            if chunked:
                size_line = f.readline()
                if not size_line:
                    return
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    return
                chunk = f.read(size)
                f.readline()
            else:
                chunk = f.read1(65536)
                if not chunk:
                    return
            buf += chunk
            *complete, buf = buf.split(b"\n")
            yield from complete

    try:
        for raw in lines():
            if not raw.strip():
                continue
            read += 1
            e = json.loads(raw)
            props = e.get("properties", {})
            if props.get("soakRun") != run_id:
                continue
            seqs = expected.get(e.get("deviceId"))
            if seqs is None:
                continue
            s = int(props.get("soakSeq", -1))
            if s in seqs:
                seqs.discard(s)
                found += 1
                if found == want:
                    break
            else:
                duplicates += 1
    except (socket.timeout, TimeoutError):
        pass
    elapsed = time.monotonic() - start
    missing = want - found
    example = next(((d, sorted(v)[:5]) for d, v in expected.items() if v), None)
    print(
        json.dumps(
            {
                "expected": want,
                "found": found,
                "missing": missing,
                "duplicatesOrUnlisted": duplicates,
                "eventsRead": read,
                "readPerSec": round(read / elapsed, 1) if elapsed > 0 else 0,
                "firstMissing": example,
            }
        )
    )
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
