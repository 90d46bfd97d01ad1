#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for the meshtap integration tests: POST /v1/traces with protobuf
bodies, decoded with the OpenTelemetry project's own generated classes (PyPI
`opentelemetry-proto`), independent of the agent's encoder.

usage: otlp_collector.py COMM [--bind ADDR] [--port P] [--out FILE] [--fail-first N]
                         [--fail-status CODE] [--retry-after SECONDS]

COMM names the process (the agent sees the collector's own traffic too). Prints
`{"event":"listening","port":P}` once listening, then serves (one thread per connection,
HTTP/1.1 keep-alive) until stdin is closed or receives a line; then prints `{"event":"done",...}`
with the stats below.

POST /v1/traces:
  - the body is gunzipped if `Content-Encoding: gzip` and decoded as an
    ExportTraceServiceRequest; a body that does not decode, or a Content-Type other than
    application/x-protobuf: 400, recorded in `errors`;
  - the first N decodable POSTs (--fail-first) get --fail-status (503), with `Retry-After:
    SECONDS` if given, and are not recorded;
  - otherwise 200 with an empty ExportTraceServiceResponse, and every span is appended to --out
    as one JSON line (flushed per POST):
      {"trace_id","span_id","parent_span_id" (lower hex, "" for none),"name","kind" (SERVER,
       CLIENT...),"start_time_unix_nano","end_time_unix_nano","flags",
       "status":{"code" (UNSET, OK, ERROR),"message"},
       "attributes":{key:{"type":"string"|"int"|"bool"|"double"|..., "value":...}},
       "resource":{key:{"type","value"}}, "scope":{"name","version"}}
GET /stats: the stats as JSON, at any time: posts, failed_posts (answered --fail-status),
  rejected_posts (400), accepted_posts, accepted_spans, gzipped_posts, content_types, errors
  (the first 20).
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from google.protobuf.message import DecodeError  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

import collector_http  # noqa: E402

KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}
CODES = {v: k.removeprefix("STATUS_CODE_") for k, v in trace_pb2.Status.StatusCode.items()}


def typed(any_value):
    """An AnyValue as {"type", "value"}: the case of its oneof, and the value."""
    case = any_value.WhichOneof("value")
    if case is None:
        return {"type": None, "value": None}
    value = getattr(any_value, case)
    if case not in ("string_value", "int_value", "bool_value", "double_value"):
        value = str(value)
    return {"type": case.removesuffix("_value"), "value": value}


def attributes(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            raise ValueError(f"attribute {kv.key} twice")
        out[kv.key] = typed(kv.value)
    return out


def flatten(request):
    """Every span of an ExportTraceServiceRequest as a JSON-ready dict."""
    spans = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = {"name": ss.scope.name, "version": ss.scope.version}
            for s in ss.spans:
                spans.append(
                    {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": KINDS.get(s.kind, str(s.kind)),
                        "start_time_unix_nano": s.start_time_unix_nano,
                        "end_time_unix_nano": s.end_time_unix_nano,
                        "flags": s.flags,
                        "status": {
                            "code": CODES.get(s.status.code, str(s.status.code)),
                            "message": s.status.message,
                        },
                        "attributes": attributes(s.attributes),
                        "resource": resource,
                        "scope": scope,
                    }
                )
    return spans


class Handler(collector_http.Collector):
    PATH = "/v1/traces"
    STATS = collector_http.stats(content_types=[])
    # Set by main().
    fail_first = 0
    fail_status = 503
    retry_after = None

    def do_POST(self):
        body = self.post_body()
        if body is None:
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        with self.LOCK:
            self.STATS["posts"] += 1
            if content_type not in self.STATS["content_types"]:
                self.STATS["content_types"].append(content_type)
        if content_type != "application/x-protobuf":
            self.reject(f"unsupported Content-Type {content_type!r}")
            return
        decoded = self.decoded(body)
        if decoded is None:
            return
        body, gzipped = decoded
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
            spans = flatten(request)
        except (DecodeError, ValueError) as e:
            self.reject(f"not an ExportTraceServiceRequest: {e}")
            return
        with self.LOCK:
            if gzipped:
                self.STATS["gzipped_posts"] += 1
            fail = self.STATS["failed_posts"] < Handler.fail_first
            if fail:
                self.STATS["failed_posts"] += 1
        if fail:
            headers = []
            if Handler.retry_after is not None:
                headers.append(("Retry-After", str(Handler.retry_after)))
            self.reply(Handler.fail_status, b"failing as told\n", headers=headers)
            return
        self.accept(spans)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.reply(200, answer, "application/x-protobuf")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--retry-after", type=int)
    a = p.parse_args()
    Handler.fail_first = a.fail_first
    Handler.fail_status = a.fail_status
    Handler.retry_after = a.retry_after
    Handler.out = open(a.out, "a") if a.out else None
    collector_http.serve(Handler, a.bind, a.port, False, mt_common.emit)
    if Handler.out is not None:
        Handler.out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
