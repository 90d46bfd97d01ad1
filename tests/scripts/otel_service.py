#!/usr/bin/env python3
"""An application instrumented with the OpenTelemetry Python SDK (manual spans, the SDK's own
propagators), for the meshtap tests that mix instrumented and plain services.

usage: otel_service.py COMM serve --bind ADDR [--backend HOST:PORT] --propagator P
       otel_service.py COMM client --port P --count N [--path PREFIX] --propagator P

Give it OTEL_SERVICE_NAME in its environment: the SDK's resource and meshtap both name the
process by it. Propagators (the SDK's): `w3c` (TraceContextTextMapPropagator), `b3`
(B3SingleFormat, header `b3`), `b3multi` (B3MultiFormat, `X-B3-*`).

serve: an http.server ThreadingHTTPServer. Each request is a SERVER span, continuing the
incoming context the propagator extracts (or starting a trace when there is none); with
--backend, the thread serving the request calls `GET /stock<path>` on the backend inside a
CLIENT span whose context the propagator injects. Prints `{"event":"listening","port":P}`,
serves until stdin receives a line, then prints `{"event":"done","spans":[...]}`.

client: `count` GETs of `PREFIX/<i>` to 127.0.0.1:PORT on one keep-alive connection, each
inside a CLIENT span that starts a trace (the SDK's ids, its sampled flag), its context
injected. Prints `{"event":"done","spans":[...],"statuses":[...]}`.

`spans`: every span the SDK finished and exported (SimpleSpanProcessor into the SDK's in-memory
exporter), written in Zipkin v2's shape (traceId, id, parentId, kind, name,
localEndpoint.serviceName) with `"sdk": true`, so that the tests read them beside meshtap's.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.client  # noqa: E402
import http.server  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from opentelemetry import trace  # noqa: E402
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import (  # noqa: E402
    TraceContextTextMapPropagator,
)

PROPAGATORS = {
    "w3c": TraceContextTextMapPropagator,
    "b3": B3SingleFormat,
    "b3multi": B3MultiFormat,
}

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider(resource=Resource.create())
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("meshtap-tests")
PROPAGATOR = None


def zipkin_shape(span):
    ctx = span.get_span_context()
    return {
        "traceId": format(ctx.trace_id, "032x"),
        "id": format(ctx.span_id, "016x"),
        "parentId": format(span.parent.span_id, "016x") if span.parent else None,
        "kind": {SpanKind.SERVER: "SERVER", SpanKind.CLIENT: "CLIENT"}.get(span.kind, "LOCAL"),
        "name": span.name,
        "localEndpoint": {"serviceName": span.resource.attributes.get("service.name")},
        "tags": {"telemetry.sdk.language": "python"},
        "sdk": True,
    }


def exported():
    return [zipkin_shape(s) for s in EXPORTER.get_finished_spans()]


def call(host, port, path, conn=None):
    """GET `path` inside a CLIENT span, its context injected; returns (status, connection)."""
    with TRACER.start_as_current_span(f"GET {path}", kind=SpanKind.CLIENT):
        headers = {}
        PROPAGATOR.inject(headers)
        own = conn is None
        if own:
            conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if own:
            conn.close()
        return resp.status


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    backend = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        carrier = {k.lower(): v for k, v in self.headers.items()}
        parent = PROPAGATOR.extract(carrier)
        with TRACER.start_as_current_span(
            f"GET {self.path}", context=parent, kind=SpanKind.SERVER
        ):
            status = 200
            if Handler.backend is not None:
                host, port = Handler.backend.rsplit(":", 1)
                # The call is made by this very thread: thread-per-request.
                status = call(host, int(port), "/stock" + self.path)
            body = b"ok\n"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(a):
    Handler.backend = a.backend
    server = Server((a.bind, 0), Handler)
    mt_common.emit("listening", port=server.server_address[1], comm=COMM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.stdin.readline()
    server.shutdown()
    mt_common.emit("done", spans=exported())


def client(a):
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    statuses = [call(None, None, f"{a.path}/{i}", conn) for i in range(a.count)]
    conn.close()
    mt_common.emit("done", spans=exported(), statuses=statuses)


def main():
    global PROPAGATOR
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("mode", choices=["serve", "client"])
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--backend")
    p.add_argument("--port", type=int)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--path", default="/item")
    p.add_argument("--propagator", choices=sorted(PROPAGATORS), required=True)
    a = p.parse_args()
    PROPAGATOR = PROPAGATORS[a.propagator]()
    if a.mode == "serve":
        serve(a)
    else:
        client(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
