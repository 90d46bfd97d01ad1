"""What the stand-in span collectors of the tests share (`zipkin_collector.py`,
`otlp_collector.py`): an HTTP/1.1 handler that reads one POST body with its limits, undoes its
`Content-Encoding`, keeps stats served at `GET /stats`, and the threaded server's life cycle.
"""

import gzip
import http.server
import json
import signal
import socket
import sys
import threading
import zlib

MAX_ERRORS = 20
MAX_BODY = 64 * 1024 * 1024


def stats(**extra):
    """The counters every collector keeps (see its usage), and `extra` ones."""
    counters = {
        "posts": 0,
        "failed_posts": 0,
        "rejected_posts": 0,
        "accepted_posts": 0,
        "accepted_spans": 0,
        "gzipped_posts": 0,
        "errors": [],
    }
    counters.update(extra)
    return counters


class Collector(http.server.BaseHTTPRequestHandler):
    """A subclass sets `PATH` (the one path POSTed to) and `STATS` (from `stats()`), and
    implements do_POST with `post_body`, `decoded` and `accept`; `out`, when set, is the file
    accepted spans go to."""

    protocol_version = "HTTP/1.1"
    PATH = None
    STATS = None
    LOCK = threading.Lock()
    out = None

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="text/plain", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/stats":
            with self.LOCK:
                body = json.dumps(self.STATS, sort_keys=True).encode()
            self.reply(200, body, "application/json")
        else:
            self.reply(404, b"not found\n")

    def reject(self, reason):
        """400, counted in `rejected_posts`, the reason kept in `errors`."""
        with self.LOCK:
            self.STATS["rejected_posts"] += 1
            if len(self.STATS["errors"]) < MAX_ERRORS:
                self.STATS["errors"].append(reason)
        self.reply(400, (reason + "\n").encode())

    def post_body(self):
        """The body of a POST to PATH; None when it was answered already (no length, too
        large, another path)."""
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self.reply(411, b"Content-Length required\n")
            self.close_connection = True
            return None
        if length < 0 or length > MAX_BODY:
            self.reply(413, b"body too large\n")
            self.close_connection = True
            return None
        body = self.rfile.read(length)
        if self.path.split("?", 1)[0] != self.PATH:
            self.reply(404, b"not found\n")
            return None
        return body

    def accept(self, spans):
        """Counts a POST of `spans` as accepted and appends them to `out`, one JSON line each
        (flushed per POST); the caller answers."""
        with self.LOCK:
            self.STATS["accepted_posts"] += 1
            self.STATS["accepted_spans"] += len(spans)
            if self.out is not None:
                for span in spans:
                    self.out.write(json.dumps(span, sort_keys=True) + "\n")
                self.out.flush()

    def decoded(self, body):
        """(body without its Content-Encoding, whether it was gzip); None when it was
        rejected."""
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body, False
        if encoding != "gzip":
            self.reject(f"unsupported Content-Encoding {encoding}")
            return None
        try:
            return gzip.decompress(body), True
        except (OSError, EOFError, zlib.error) as e:
            self.reject(f"bad gzip body: {e}")
            return None


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def serve(handler, bind, port, forever, emit):
    """Serves `handler` on bind:port: emits `listening`, runs until stdin gives a line or closes
    (or, with `forever`, until SIGTERM/SIGINT), then emits `done` with the handler's stats."""
    if ":" in bind:
        Server.address_family = socket.AF_INET6
    server = Server((bind, port), handler)
    emit("listening", port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    if forever:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
    else:
        sys.stdin.readline()
    server.shutdown()
    with handler.LOCK:
        emit("done", **handler.STATS)
