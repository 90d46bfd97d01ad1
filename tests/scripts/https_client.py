#!/usr/bin/env python3
"""An HTTPS client (Python's http.client over `ssl`, that is the system's libssl) for the
meshtap tests.

usage: https_client.py COMM --port P --paths PATH[,PATH...] --rounds N [--connections C]

Opens C keep-alive connections to 127.0.0.1:P (certificate not checked) and on each sends the
paths in order, N rounds, reading every response fully. Give it OTEL_SERVICE_NAME to name its
service. Prints `{"event":"done","statuses":{"STATUS":count,...},"requests":R}`.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.client  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--paths", required=True)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--connections", type=int, default=1)
    a = p.parse_args()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    statuses = {}
    requests = 0
    for _ in range(a.connections):
        conn = http.client.HTTPSConnection("127.0.0.1", a.port, context=context, timeout=30)
        for _ in range(a.rounds):
            for path in a.paths.split(","):
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                key = str(response.status)
                statuses[key] = statuses.get(key, 0) + 1
                requests += 1
        conn.close()
    mt_common.emit("done", statuses=statuses, requests=requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
