#!/usr/bin/env python3
"""One long-lived PostgreSQL connection (pg8000), driven line by line from stdin.

`pg_session.py COMM --port P [--tls]` connects to 127.0.0.1:P as user `postgres`, database
`postgres`, in plain text, or with `--tls` as pg8000 does by default (an `SSLRequest`, then TLS if
the server accepts it, without verifying its certificate), prints a `connected` event, then for each line read runs it as one simple query
(pg8000's `run` without parameters sends one `Q` message) and prints a `ran` event with the
number of rows. An empty line or end of input closes the connection (Terminate) and prints
`done`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mt_common  # noqa: E402

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402

import pg8000.native  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", action="store_true")
    a = p.parse_args()
    con = pg8000.native.Connection(
        "postgres",
        host="127.0.0.1",
        port=a.port,
        database="postgres",
        ssl_context=None if a.tls else False,
    )
    tls = con.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0][0]
    mt_common.emit("connected", tls=tls)
    queries = 0
    for line in sys.stdin:
        sql = line.strip()
        if not sql:
            break
        rows = con.run(sql)
        queries += 1
        mt_common.emit("ran", rows=len(rows) if rows is not None else 0)
    con.close()
    mt_common.emit("done", queries=queries)


if __name__ == "__main__":
    main()
