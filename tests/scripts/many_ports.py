#!/usr/bin/env python3
"""Many HTTP/1.1 servers in one process, for the web page's scale test.

usage: many_ports.py COMM --count N

Listens on N free ports of 127.0.0.1 (one ThreadingHTTPServer each, keep-alive), answers every
GET `200 ok`, prints `{"event":"listening","ports":[P, ...]}` and serves until stdin is closed or
receives a line; then prints `{"event":"done","served":N}`.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

served = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        global served
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with lock:
            served += 1

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args(sys.argv[2:])
    servers = []
    for _ in range(args.count):
        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    print(json.dumps({"event": "listening", "ports": [s.server_address[1] for s in servers]}), flush=True)
    sys.stdin.readline()
    for s in servers:
        s.shutdown()
    with lock:
        print(json.dumps({"event": "done", "served": served}), flush=True)


main()
