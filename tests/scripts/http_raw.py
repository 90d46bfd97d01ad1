#!/usr/bin/env python3
"""A raw-socket HTTP/1.1 server and client for the meshtap integration tests: exactly the bytes,
writes and reads a test needs, nothing that a library would add or coalesce.

usage: http_raw.py COMM server --bind ADDR [--port P]
       http_raw.py COMM client --host H --port P --mode MODE [options]

Give each process OTEL_SERVICE_NAME in its environment to name its service.

The server prints `{"event":"listening","port":P}` and serves every connection in its own
thread until it is killed. It answers every complete request found in one read with ONE write
(pipelined responses coalesce), except the special routes, which flush what is pending first:
  /status/<code>         <code>, body `status <code>\\n` (11 bytes for a 3-digit code)
  /bytes/<n>             200, body of n bytes
  /chunked/<total>/<c>   200, chunked body of <total> bytes in chunks of <c> bytes, each chunk
                         (size line, data, CRLF) in one write, the last chunk in its own write
  /dribble/<n>           200, body of n bytes, the whole response written one byte per write
  /wait                  waits for a line on the server's stdin, then 200, body `waited\\n`
  /close                 closes the connection without answering
  anything else          200, body `ok`
A connection whose bytes do not start like an HTTP/1.x request is read until EOF, then closed,
without any answer.

The client prints `{"event":"done",...}` with what it did: `requests` written, `responses`
read whole, `statuses` (status -> count), `request_body` and `response_body` (sums of body
lengths), `connections`. With --hold it then waits for a line (or EOF) on stdin before exiting,
so that its process can still be looked at.
modes:
  seq        on one connection, for each of --paths (comma-separated) --repeat times: GET it
             and read the response
  pipeline   write GET requests for all --paths in ONE write, then read all the responses
  batches    GET --prefix<i> for i in 1..=--count, pipelined --batch requests per write (every
             write and every response batch stays below 1024 bytes: within the agent's capture)
  dribble    POST --path with a --body byte body, written one byte per write; the response
             read one byte per read
  chunked    GET --path, read the response --recv bytes per read
  junk       write --size bytes (--kind random: random bytes; tls: a TLS 1.2 ClientHello
             record header then random bytes), shut down writing, read until EOF
  midstream  --warm GETs of --path, then GET /wait and print `{"event":"waiting"}` (the
             server answers /wait when told to), then --then more GETs of --path
  noresp     --count connections, each: GET /close, expect EOF without a response
  hangup     --count connections, each: GET --path and close at once, reading nothing
  reuse      --count connections, each: GET --path and read the response, wait --pause ms, GET
             --path again whatever the response said (a server that closed the connection
             meanwhile resets it), and read until EOF or reset; `unanswered` counts the second
             requests that got no response
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
REQUEST_LINE = re.compile(rb"^[A-Z]{1,16} \S+ HTTP/1\.[01]$")
METHOD_PREFIX = re.compile(rb"^[A-Z]{0,16}( |$)")
MAX_HEAD = 64 * 1024
STDIN_LOCK = threading.Lock()


def response(status, body):
    reason = REASONS.get(status, "Status")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return head + body


OK = response(200, b"ok")


class BadRequest(Exception):
    pass


def parse_request(buf):
    """(method, path, body, rest) for the first complete request in buf, None if incomplete;
    raises BadRequest when the bytes cannot be HTTP/1.x."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        first = buf.split(b"\r\n", 1)[0]
        if not METHOD_PREFIX.match(first[:17]) or len(buf) > MAX_HEAD:
            raise BadRequest()
        return None
    lines = buf[:end].split(b"\r\n")
    if not REQUEST_LINE.match(lines[0]):
        raise BadRequest()
    method, target, _ = lines[0].split(b" ")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if len(buf) < end + 4 + length:
        return None
    body = buf[end + 4 : end + 4 + length]
    return method.decode(), target.decode(), body, buf[end + 4 + length :]


def drain(conn):
    while conn.recv(65536):
        pass


def flush(conn, pending):
    """Write the pending responses in one write (none when there are none); returns []."""
    if pending:
        conn.sendall(b"".join(pending))
    return []


def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            pending = []
            while True:
                try:
                    req = parse_request(buf)
                except BadRequest:
                    drain(conn)
                    return
                if req is None:
                    break
                _method, target, _body, buf = req
                path = target.split("?", 1)[0]
                parts = path.split("/")
                if path.startswith("/status/"):
                    code = int(parts[2])
                    pending.append(response(code, f"status {code}\n".encode()))
                elif path.startswith("/bytes/"):
                    pending.append(response(200, b"b" * int(parts[2])))
                elif path.startswith("/chunked/"):
                    pending = flush(conn, pending)
                    send_chunked(conn, int(parts[2]), int(parts[3]))
                elif path.startswith("/dribble/"):
                    pending = flush(conn, pending)
                    for byte in response(200, b"d" * int(parts[2])):
                        conn.sendall(bytes([byte]))
                elif path == "/wait":
                    pending = flush(conn, pending)
                    with STDIN_LOCK:
                        sys.stdin.readline()
                    conn.sendall(response(200, b"waited\n"))
                elif path == "/close":
                    flush(conn, pending)
                    return
                else:
                    pending.append(OK)
            flush(conn, pending)
    finally:
        conn.close()


def send_chunked(conn, total, chunk):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    data = b"c" * chunk
    left = total
    while left > 0:
        n = min(chunk, left)
        conn.sendall(b"%x\r\n" % n + data[:n] + b"\r\n")
        left -= n
    conn.sendall(b"0\r\n\r\n")


def run_server(a):
    family = mt_common.family_of(a.bind)
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((a.bind, a.port))
    lsock.listen(1024)
    mt_common.emit("listening", port=lsock.getsockname()[1], comm=COMM)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class Eof(Exception):
    pass


class Client:
    def __init__(self, a):
        self.a = a
        self.sock = None
        self.buf = bytearray()
        self.recv_size = a.recv
        self.stats = {
            "requests": 0,
            "responses": 0,
            "statuses": {},
            "request_body": 0,
            "response_body": 0,
            "connections": 0,
        }
        self.slow_every = 0

    def connect(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.socket(mt_common.family_of(self.a.host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.connect((self.a.host, self.a.port))
        self.buf = bytearray()
        self.stats["connections"] += 1

    def request(self, path, method="GET", body=b""):
        head = f"{method} {path} HTTP/1.1\r\nHost: h\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        self.stats["requests"] += 1
        self.stats["request_body"] += len(body)
        return head.encode() + b"\r\n" + body

    def fill(self):
        data = self.sock.recv(self.recv_size)
        if not data:
            raise Eof()
        self.buf += data
        return len(data)

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            self.fill()

    def skip(self, n):
        """Consume n body bytes, reading as needed."""
        received = 0
        while n > 0:
            if not self.buf:
                received += self.fill()
                if self.slow_every and received >= self.slow_every:
                    received = 0
                    time.sleep(0.001)
            take = min(n, len(self.buf))
            del self.buf[:take]
            n -= take

    def response(self):
        while self.buf.find(b"\r\n\r\n") < 0:
            self.fill()
        end = self.buf.find(b"\r\n\r\n")
        head = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        status = int(head[0].split(b" ")[1])
        length, chunked = 0, False
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        body = 0
        if chunked:
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line() != b"":
                        pass
                    break
                self.skip(size)
                body += size
                if self.line() != b"":
                    raise SystemExit("chunk not followed by CRLF")
        else:
            self.skip(length)
            body = length
        self.stats["responses"] += 1
        key = str(status)
        self.stats["statuses"][key] = self.stats["statuses"].get(key, 0) + 1
        self.stats["response_body"] += body

    def get(self, path):
        self.sock.sendall(self.request(path))
        self.response()


def run_client(a):
    c = Client(a)
    if a.mode == "seq":
        c.connect()
        for path in a.paths.split(","):
            for _ in range(a.repeat):
                c.get(path)
    elif a.mode == "pipeline":
        c.connect()
        paths = a.paths.split(",")
        c.sock.sendall(b"".join(c.request(p) for p in paths))
        for _ in paths:
            c.response()
    elif a.mode == "batches":
        c.connect()
        i = 1
        while i <= a.count:
            ids = range(i, min(i + a.batch, a.count + 1))
            data = b"".join(c.request(f"{a.prefix}{n}") for n in ids)
            if len(data) > 1000:
                raise SystemExit(f"batch of {len(data)} bytes is beyond the capture")
            c.sock.sendall(data)
            for _ in ids:
                c.response()
            i += len(ids)
    elif a.mode == "dribble":
        c.connect()
        c.recv_size = 1
        for byte in c.request(a.path, "POST", b"p" * a.body):
            c.sock.sendall(bytes([byte]))
        c.response()
    elif a.mode == "chunked":
        c.connect()
        c.slow_every = 64 * 1024
        c.get(a.path)
    elif a.mode == "junk":
        c.connect()
        rng = random.Random(a.seed)
        data = bytes(rng.getrandbits(8) for _ in range(a.size))
        if a.kind == "tls":
            # TLS record: handshake (0x16), version 3.1, length; ClientHello (1), length, 3.3.
            body_len = a.size - 5
            data = (
                bytes([0x16, 0x03, 0x01, body_len >> 8, body_len & 0xFF, 0x01, 0x00])
                + (body_len - 4).to_bytes(2, "big")
                + bytes([0x03, 0x03])
                + data[11:]
            )
        c.sock.sendall(data)
        c.sock.shutdown(socket.SHUT_WR)
        while c.sock.recv(65536):
            raise SystemExit("the server answered junk")
        c.stats["junk_bytes"] = len(data)
    elif a.mode == "midstream":
        c.connect()
        for _ in range(a.warm):
            c.get(a.path)
        c.sock.sendall(c.request("/wait"))
        mt_common.emit("waiting")
        c.response()
        for _ in range(getattr(a, "then")):
            c.get(a.path)
    elif a.mode == "noresp":
        for _ in range(a.count):
            c.connect()
            c.sock.sendall(c.request("/close"))
            try:
                c.response()
                raise SystemExit("/close was answered")
            except Eof:
                pass
    elif a.mode == "reuse":
        c.stats["unanswered"] = 0
        c.stats["unsent"] = 0
        for _ in range(a.count):
            c.connect()
            c.get(a.path)
            time.sleep(a.pause / 1000)
            try:
                c.sock.sendall(c.request(a.path))
            except OSError:
                c.stats["unsent"] += 1
                continue
            try:
                c.response()
            except (Eof, ConnectionResetError):
                c.stats["unanswered"] += 1
    elif a.mode == "hangup":
        for _ in range(a.count):
            c.connect()
            c.sock.sendall(c.request(a.path))
            c.sock.close()
            c.sock = None
    if c.sock is not None:
        c.sock.close()
    mt_common.emit("done", **c.stats)
    if a.hold:
        sys.stdin.readline()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument(
        "--mode",
        required=True,
        choices=["seq", "pipeline", "batches", "dribble", "chunked", "junk", "midstream", "noresp", "hangup", "reuse"],
    )
    c.add_argument("--paths", default="/")
    c.add_argument("--path", default="/")
    c.add_argument("--repeat", type=int, default=1)
    c.add_argument("--prefix", default="/users/")
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--batch", type=int, default=20)
    c.add_argument("--body", type=int, default=0)
    c.add_argument("--recv", type=int, default=65536)
    c.add_argument("--kind", default="random", choices=["random", "tls"])
    c.add_argument("--size", type=int, default=4096)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--warm", type=int, default=0)
    c.add_argument("--then", type=int, default=0)
    c.add_argument("--pause", type=int, default=50)
    c.add_argument("--hold", action="store_true")
    a = p.parse_args()
    if a.role == "server":
        run_server(a)
    else:
        run_client(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
