#!/usr/bin/env python3
"""An HTTP/1.1 client for the meshtap tracing tests (http.client, one thread).

usage: trace_client.py COMM --host H --port P --count N [--path PREFIX]
                       [--connection keepalive|close|mixed] [--propagate MODE]
                       [--headers-json JSON] [--pause-ms MS] [--first K]

Give it OTEL_SERVICE_NAME in its environment to name its service. Request i is
`GET PREFIX/<K + i>` (K: --first, default 0); `mixed` sends the first half on one keep-alive
connection and every other request on a connection of its own (`Connection: close`).

--propagate (the trace context the client starts, fresh random ids per request):
  none       no trace headers
  b3         X-B3-TraceId (32 hex), X-B3-SpanId, X-B3-Sampled: 1
  b3-64      X-B3-TraceId of 16 hex, X-B3-SpanId
  b3-debug   X-B3-TraceId, X-B3-SpanId, X-B3-Flags: 1
  b3-off     X-B3-TraceId, X-B3-SpanId, X-B3-Sampled: 0
  w3c        traceparent 00-<trace>-<span>-01
  w3c-64     traceparent 00-<16 zeros + 16 hex>-<span>-01 (a 64-bit trace id)
  w3c-off    traceparent 00-<trace>-<span>-00
--headers-json: a JSON list of {name: value} objects; request i also sends entry i % len.
--query: appended to every request's path (e.g. `status=500`); --query-every K: only to
requests whose index is a multiple of K.

Prints `{"event":"done","requests":[{"i","path","t","t_end","status","headers"}...],"exe":E}`
where `t` is time.time() just before the request was written (the connection is already open) and `t_end` after the response was
read.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def hex_id(nbytes):
    while True:
        v = secrets.token_hex(nbytes)
        if set(v) != {"0"}:
            return v


def context(mode):
    if mode == "none":
        return {}
    if mode == "b3":
        return {"X-B3-TraceId": hex_id(16), "X-B3-SpanId": hex_id(8), "X-B3-Sampled": "1"}
    if mode == "b3-64":
        return {"X-B3-TraceId": hex_id(8), "X-B3-SpanId": hex_id(8), "X-B3-Sampled": "1"}
    if mode == "b3-debug":
        return {"X-B3-TraceId": hex_id(16), "X-B3-SpanId": hex_id(8), "X-B3-Flags": "1"}
    if mode == "b3-off":
        return {"X-B3-TraceId": hex_id(16), "X-B3-SpanId": hex_id(8), "X-B3-Sampled": "0"}
    if mode == "w3c":
        return {"traceparent": f"00-{hex_id(16)}-{hex_id(8)}-01"}
    if mode == "w3c-64":
        return {"traceparent": f"00-{'0' * 16}{hex_id(8)}-{hex_id(8)}-01"}
    if mode == "w3c-off":
        return {"traceparent": f"00-{hex_id(16)}-{hex_id(8)}-00"}
    raise SystemExit(f"unknown --propagate {mode}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--path", default="/item")
    p.add_argument("--connection", choices=["keepalive", "close", "mixed"], default="keepalive")
    p.add_argument(
        "--propagate",
        choices=["none", "b3", "b3-64", "b3-debug", "b3-off", "w3c", "w3c-64", "w3c-off"],
        default="none",
    )
    p.add_argument("--headers-json")
    p.add_argument("--pause-ms", type=float, default=5)
    p.add_argument("--query")
    p.add_argument("--query-every", type=int, default=1)
    p.add_argument("--first", type=int, default=0)
    a = p.parse_args()
    extra = json.loads(a.headers_json) if a.headers_json else []
    shared = None
    results = []
    for i in range(a.count):
        keepalive = a.connection == "keepalive" or (a.connection == "mixed" and i < a.count // 2)
        headers = context(a.propagate)
        if extra:
            headers.update(extra[i % len(extra)])
        if not keepalive:
            headers["Connection"] = "close"
        path = f"{a.path}/{a.first + i}"
        if a.query and i % a.query_every == 0:
            path += "?" + a.query
        if keepalive:
            if shared is None:
                shared = http.client.HTTPConnection(a.host, a.port, timeout=30)
            conn = shared
        else:
            if shared is not None:
                shared.close()
                shared = None
            conn = http.client.HTTPConnection(a.host, a.port, timeout=30)
        if conn.sock is None:
            conn.connect()
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        # Taken right before the request is written (one send: http.client sends the headers
        # in one piece).
        t = time.time()
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        t_end = time.time()
        if not keepalive:
            conn.close()
        results.append(
            {"i": i, "path": path, "t": t, "t_end": t_end, "status": resp.status, "headers": headers}
        )
        if a.pause_ms > 0:
            time.sleep(a.pause_ms / 1000)
    if shared is not None:
        shared.close()
    exe = os.path.basename(os.readlink("/proc/self/exe"))
    mt_common.emit("done", requests=results, exe=exe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
