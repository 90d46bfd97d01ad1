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
import json
import sys

import collector_http
import zipkin_schema


class Handler(collector_http.Collector):
    PATH = "/api/v2/spans"
    STATS = collector_http.stats()
    # Set by main().
    validator = None
    fail_first = 0
    fail_status = 503

    def do_POST(self):
        body = self.post_body()
        if body is None:
            return
        with self.LOCK:
            self.STATS["posts"] += 1
            fail = self.STATS["posts"] <= Handler.fail_first
            if fail:
                self.STATS["failed_posts"] += 1
        if fail:
            self.reply(Handler.fail_status, b"failing as told\n")
            return
        decoded = self.decoded(body)
        if decoded is None:
            return
        body, gzipped = decoded
        if gzipped:
            with self.LOCK:
                self.STATS["gzipped_posts"] += 1
        try:
            spans = json.loads(body)
        except ValueError as e:
            self.reject(f"malformed JSON: {e}")
            return
        error = zipkin_schema.first_error(Handler.validator, spans)
        if error is not None:
            self.reject(f"not a ListOfSpans: {error}")
            return
        self.accept(spans)
        self.reply(202)


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
    collector_http.serve(Handler, a.bind, a.port, a.forever, emit)
    if Handler.out is not None:
        Handler.out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
