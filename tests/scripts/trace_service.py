#!/usr/bin/env python3
"""An HTTP/1.1 service for the meshtap tracing tests: a ThreadingHTTPServer (one thread per
connection) that optionally calls a backend from the thread serving the request
(thread-per-request), propagating a trace context or not.

usage: trace_service.py COMM --bind ADDR [--port P] [--backend HOST:PORT]
                        [--propagate none|b3|w3c]

Give it OTEL_SERVICE_NAME in its environment to name its service. Prints
`{"event":"listening","port":P,"exe":NAME}` once listening and serves until stdin is closed or
receives a line; then prints `{"event":"done","requests":[...]}`, one entry per request served,
in the order they were answered:
  {"path", "method", "status", "incoming": {trace headers received}, "outgoing": {trace headers
   sent to the backend} (with --backend), "backend_status", "t_in"/"t_out": time.time() when the
   handler started / finished, "call_start"/"call_end": around the backend call, "tid"}.

Propagation (with --backend):
  b3   X-B3-TraceId copied, a new X-B3-SpanId, X-B3-ParentSpanId = the incoming X-B3-SpanId,
       X-B3-Sampled / X-B3-Flags copied;
  w3c  traceparent 00-<same trace id>-<new parent id>-<same flags>;
  none no trace headers at all.

routes: any path; `?status=N` answers N (default 200, or the backend's status with --backend);
`?sleep=MS` sleeps that long before answering (after the backend call).
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.client  # noqa: E402
import http.server  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402

LOCK = threading.Lock()
REQUESTS = []
TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)


def new_span_id():
    while True:
        v = secrets.token_hex(8)
        if v != "0" * 16:
            return v


def outgoing_headers(mode, incoming):
    if mode == "b3" and "x-b3-traceid" in incoming:
        out = {
            "X-B3-TraceId": incoming["x-b3-traceid"],
            "X-B3-SpanId": new_span_id(),
        }
        if "x-b3-spanid" in incoming:
            out["X-B3-ParentSpanId"] = incoming["x-b3-spanid"]
        if "x-b3-sampled" in incoming:
            out["X-B3-Sampled"] = incoming["x-b3-sampled"]
        if "x-b3-flags" in incoming:
            out["X-B3-Flags"] = incoming["x-b3-flags"]
        return out
    if mode == "w3c" and "traceparent" in incoming:
        parts = incoming["traceparent"].split("-")
        return {"traceparent": f"00-{parts[1]}-{new_span_id()}-{parts[3]}"}
    return {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    backend = None
    propagate = "none"

    def log_message(self, *args):
        pass

    def answer(self):
        t_in = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        incoming = {k: self.headers[k] for k in TRACE_HEADERS if self.headers.get(k) is not None}
        incoming = {k.lower(): v for k, v in incoming.items()}
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        record = {
            "path": self.path,
            "method": self.command,
            "incoming": incoming,
            "t_in": t_in,
            "tid": threading.get_native_id(),
        }
        status = 200
        if Handler.backend is not None:
            headers = outgoing_headers(Handler.propagate, incoming)
            host, port = Handler.backend.rsplit(":", 1)
            # The call is made by this very thread: thread-per-request.
            record["call_start"] = time.time()
            conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
            conn.request("GET", "/stock" + url.path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            record["call_end"] = time.time()
            record["outgoing"] = headers
            record["backend_status"] = resp.status
            status = resp.status
        if "sleep" in query:
            time.sleep(float(query["sleep"][0]) / 1000)
        if "status" in query:
            status = int(query["status"][0])
        body = b"ok\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        record["status"] = status
        record["t_out"] = time.time()
        with LOCK:
            REQUESTS.append(record)

    do_GET = answer
    do_POST = answer


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backend")
    p.add_argument("--propagate", choices=["none", "b3", "w3c"], default="none")
    a = p.parse_args()
    Handler.backend = a.backend
    Handler.propagate = a.propagate
    if ":" in a.bind:
        Server.address_family = mt_common.family_of(a.bind)
    server = Server((a.bind, a.port), Handler)
    exe = os.path.basename(os.readlink("/proc/self/exe"))
    mt_common.emit("listening", port=server.server_address[1], comm=COMM, exe=exe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.stdin.readline()
    server.shutdown()
    with LOCK:
        mt_common.emit("done", requests=list(REQUESTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
