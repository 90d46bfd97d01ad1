#!/usr/bin/env python3
"""An HTTP/1.1 backend (http.server) for the meshtap integration tests.

usage: http_backend.py COMM --bind ADDR [--port P] [--tls CERT,KEY] [--peek]

Give it OTEL_SERVICE_NAME in its environment to name its service. Prints
`{"event":"listening","port":P}` once listening and serves, one thread per connection, with
keep-alive and Content-Length responses (over TLS with Python's `ssl`, that is the system's
libssl, given --tls; with --peek each request's first bytes are peeked at with
recv(MSG_PEEK) before it is read), until stdin is closed or receives a line; then prints
`{"event":"done","served":{"METHOD STATUS":count,...},"request_body":B,"response_body":B}`.

routes:
  /api/users/<id>  200, body `user <id>\\n` (a request body is read and counted)
  /api/slow        sleeps 100 ms, then 200, body `slow\\n`
  /api/fail        500, body `fail\\n`
  /api/unsized     200, body `unsized\\n` without Content-Length: it ends when the server
                   closes the connection (Connection: close)
  anything else    404, body `nope\\n`
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.server  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

LOCK = threading.Lock()
SERVED = {}
TOTALS = {"request_body": 0, "response_body": 0}
PEEK = False


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the body would wait for
    # the client's delayed ACK (40 ms on Linux), and the client would see 140 ms for /api/slow.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/users/"):
            status, body = 200, f"user {path[len('/api/users/'):]}\n".encode()
        elif path == "/api/slow":
            time.sleep(0.1)
            status, body = 200, b"slow\n"
        elif path == "/api/fail":
            status, body = 500, b"fail\n"
        elif path == "/api/unsized":
            status, body = 200, b"unsized\n"
        else:
            status, body = 404, b"nope\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        if path == "/api/unsized":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with LOCK:
            key = f"{self.command} {status}"
            SERVED[key] = SERVED.get(key, 0) + 1
            TOTALS["request_body"] += len(body_in)
            TOTALS["response_body"] += len(body)

    def handle_one_request(self):
        if PEEK:
            # recvfrom(2) with MSG_PEEK: the bytes stay queued for the read that follows.
            try:
                self.connection.recv(64, socket.MSG_PEEK)
            except OSError:
                pass
        super().handle_one_request()

    do_GET = answer
    do_POST = answer
    do_PUT = answer
    do_DELETE = answer


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", help="CERT,KEY: serve HTTPS")
    p.add_argument("--peek", action="store_true", help="peek at each request before reading it")
    a = p.parse_args()
    global PEEK
    PEEK = a.peek
    if ":" in a.bind:
        Server.address_family = mt_common.family_of(a.bind)
    server = Server((a.bind, a.port), Handler)
    if a.tls:
        import ssl

        cert, key = a.tls.split(",")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        # The handshake runs in the connection's thread, at its first read.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    mt_common.emit("listening", port=server.server_address[1], comm=COMM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.stdin.readline()
    server.shutdown()
    with LOCK:
        mt_common.emit("done", served=dict(SERVED), **TOTALS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
