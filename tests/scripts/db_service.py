#!/usr/bin/env python3
"""A web service that queries PostgreSQL (pg8000) and Redis (redis-py) per request, for
tests/tests/db_spans.rs.

usage: db_service.py COMM --bind ADDR --pg-port P --redis-port R [--pool N]

A ThreadingHTTPServer (one thread per connection); the thread serving `GET /order/<id>` runs,
itself and in this order:
  SELECT id, item FROM orders WHERE id = <id>      (PostgreSQL, the id a literal in the text)
  GET order:<id>                                    (Redis, the id in the key)
then answers 200 with the item. `GET /commented/<id>` runs the same SELECT with a sqlcommenter
comment appended, and no Redis command: `/*traceparent='00-<trace>-<new span id>-<flags>'*/`,
the trace and flags of the request's own `traceparent` header (as a W3C tracer propagates it).

The connections (N pairs, default 4) are opened at start, before the service listens, and lent
to the request's thread for the request. redis-py sends no CLIENT SETINFO (lib_name=None), so
the only commands the service sends are the requests' own.

Give it OTEL_SERVICE_NAME in its environment to name its service. Prints
`{"event":"listening","port":P}` once listening and serves until stdin is closed or receives a
line; then prints `{"event":"done","requests":[{"path","status","tid","outgoing"}...]}`
(`outgoing`: the traceparent put in the SQL comment, or null).
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.server  # noqa: E402
import queue  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import urllib.parse  # noqa: E402

import pg8000.native  # noqa: E402
import redis  # noqa: E402

LOCK = threading.Lock()
REQUESTS = []
POOL = queue.Queue()


def select(pg, order_id, comment=""):
    # The id is a literal in the statement's text, on purpose: the agent must not let it out.
    return pg.run(f"SELECT id, item FROM orders WHERE id = {order_id}{comment}")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        status, body = 404, b"not found\n"
        outgoing = None
        if len(parts) == 2 and parts[1].isdigit():
            order_id = int(parts[1])
            pg, r = POOL.get()
            try:
                if parts[0] == "order":
                    rows = select(pg, order_id)
                    cached = r.get(f"order:{order_id}")
                    status, body = 200, repr((rows, cached)).encode() + b"\n"
                elif parts[0] == "commented":
                    _, trace, _, flags = self.headers["traceparent"].split("-")
                    outgoing = f"00-{trace}-{secrets.token_hex(8)}-{flags}"
                    rows = select(pg, order_id, f" /*traceparent='{outgoing}'*/")
                    status, body = 200, repr(rows).encode() + b"\n"
            finally:
                POOL.put((pg, r))
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        with LOCK:
            REQUESTS.append(
                {
                    "path": self.path,
                    "status": status,
                    "tid": threading.get_native_id(),
                    "outgoing": outgoing,
                }
            )


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--bind", required=True)
    p.add_argument("--pg-port", type=int, required=True)
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--pool", type=int, default=4)
    a = p.parse_args()
    for _ in range(a.pool):
        pg = pg8000.native.Connection(
            "postgres", host="127.0.0.1", port=a.pg_port, database="postgres"
        )
        r = redis.Redis(
            host="127.0.0.1",
            port=a.redis_port,
            protocol=2,
            lib_name=None,
            lib_version=None,
            single_connection_client=True,
        )
        POOL.put((pg, r))
    server = Server((a.bind, 0), Handler)
    mt_common.emit("listening", port=server.server_address[1], comm=COMM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.stdin.readline()
    server.shutdown()
    with LOCK:
        mt_common.emit("done", requests=list(REQUESTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
