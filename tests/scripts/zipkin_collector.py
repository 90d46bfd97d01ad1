#!/usr/bin/env python3
"""A Zipkin collector for the meshtap integration tests: POST /api/v2/spans, validated against
the `ListOfSpans` definition of the official spec (shared/spec/zipkin2-api.yaml).

usage: zipkin_collector.py [--bind ADDR] [--port P] [--out FILE] [--fail-first N]
                           [--fail-status CODE] [--strict] [--forever] [--spec PATH]

Prints `{"event":"listening","port":P}` once listening, then serves (one thread per
connection, HTTP/1.1 keep-alive) until stdin is closed or receives a line (or, with --forever,
until SIGTERM/SIGINT); then prints `{"event":"done",...}` with the stats below.

POST /api/v2/spans:
  - the first N POSTs (--fail-first) get --fail-status (503), whatever their body, and are
    not recorded;
  - the body is gunzipped if `Content-Encoding: gzip`, parsed as JSON and validated; malformed
    gzip, JSON or schema: 400, recorded in `errors`;
  - otherwise 202, and every span is appended to --out as one JSON line (flushed per POST).
GET /stats: the stats as JSON, at any time: posts, failed_posts (answered --fail-status),
  rejected_posts (400), accepted_posts, accepted_spans, gzipped_posts, errors (the first 20).
--strict: see zipkin_schema.py (anchored id patterns, lowercase names, ports 1..65535).
"""

import argparse
import gzip
import http.server
import json
import signal
import sys
import threading
import zlib

import zipkin_schema

LOCK = threading.Lock()
STATS = {
    "posts": 0,
    "failed_posts": 0,
    "rejected_posts": 0,
    "accepted_posts": 0,
    "accepted_spans": 0,
    "gzipped_posts": 0,
    "errors": [],
}
MAX_ERRORS = 20
MAX_BODY = 64 * 1024 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Set by main().
    validator = None
    fail_first = 0
    fail_status = 503
    out = None

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/stats":
            with LOCK:
                body = json.dumps(STATS, sort_keys=True).encode()
            self.reply(200, body, "application/json")
        else:
            self.reply(404, b"not found\n")

    def reject(self, reason):
        with LOCK:
            STATS["rejected_posts"] += 1
            if len(STATS["errors"]) < MAX_ERRORS:
                STATS["errors"].append(reason)
        self.reply(400, (reason + "\n").encode())

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self.reply(411, b"Content-Length required\n")
            self.close_connection = True
            return
        if length < 0 or length > MAX_BODY:
            self.reply(413, b"body too large\n")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        if self.path.split("?", 1)[0] != "/api/v2/spans":
            self.reply(404, b"not found\n")
            return
        with LOCK:
            STATS["posts"] += 1
            fail = STATS["posts"] <= Handler.fail_first
            if fail:
                STATS["failed_posts"] += 1
        if fail:
            self.reply(Handler.fail_status, b"failing as told\n")
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as e:
                self.reject(f"bad gzip body: {e}")
                return
            with LOCK:
                STATS["gzipped_posts"] += 1
        elif encoding != "identity":
            self.reject(f"unsupported Content-Encoding {encoding}")
            return
        try:
            spans = json.loads(body)
        except ValueError as e:
            self.reject(f"malformed JSON: {e}")
            return
        error = zipkin_schema.first_error(Handler.validator, spans)
        if error is not None:
            self.reject(f"not a ListOfSpans: {error}")
            return
        with LOCK:
            STATS["accepted_posts"] += 1
            STATS["accepted_spans"] += len(spans)
            if Handler.out is not None:
                for span in spans:
                    Handler.out.write(json.dumps(span, sort_keys=True) + "\n")
                Handler.out.flush()
        self.reply(202)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--strict", action="store_true")
    p.add_argument("--forever", action="store_true")
    p.add_argument("--spec")
    a = p.parse_args()
    Handler.validator = zipkin_schema.validator("ListOfSpans", a.spec, a.strict)
    Handler.fail_first = a.fail_first
    Handler.fail_status = a.fail_status
    Handler.out = open(a.out, "a") if a.out else None
    if ":" in a.bind:
        import socket

        Server.address_family = socket.AF_INET6
    server = Server((a.bind, a.port), Handler)
    emit("listening", port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    if a.forever:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
    else:
        sys.stdin.readline()
    server.shutdown()
    with LOCK:
        emit("done", **STATS)
        if Handler.out is not None:
            Handler.out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
