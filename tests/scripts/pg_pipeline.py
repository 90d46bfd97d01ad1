#!/usr/bin/env python3
"""Server-side prepared statements in one psycopg 3 pipeline, with a failure in its middle.

`pg_pipeline.py COMM --port P --count K` connects (psycopg 3, autocommit, plain text) to
127.0.0.1:P as user `postgres`, database `postgres`, and on that one connection, inside one
`with conn.pipeline():` block, sends K `INSERT INTO pipe VALUES (%s)` and K
`SELECT v FROM pipe WHERE v = %s`, all with `prepare=True`, then `SELECT pg_sleep(1)`, then
`SELECT * FROM missing_pipe` (no such table: SQLSTATE 42P01), then K more prepared INSERTs,
without fetching any result: libpq sends one `Parse` per distinct prepared statement (named
`_pg3_N`), then `Bind`/`Describe`/`Execute` per execution (the unprepared ones: an unnamed
`Parse` each), and one `Sync` when the block ends (seen with strace). psycopg reads the results
available after each execute and raises as soon as it sees an error, sending nothing more but
the `Sync`: the sleep holds the server's answer back so that the last K INSERTs are sent before
the error comes back. The server skips them (every message until the `Sync`), and the error
rolls back the pipeline's implicit transaction: the first K INSERTs too. The block raises
`UndefinedTable`. Afterwards, outside the pipeline, `SELECT count(*) FROM pipe` (prepared: a
`Parse` and `Sync` alone, then `Bind`/`Describe`/`Execute`/`Sync`) counts 0 rows. Prints one
`done` event: `error` (the SQLSTATE the pipeline raised) and `rows`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mt_common  # noqa: E402

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402

import psycopg  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    a = p.parse_args()
    conn = psycopg.connect(
        host="127.0.0.1",
        port=a.port,
        user="postgres",
        dbname="postgres",
        sslmode="disable",
        gssencmode="disable",
        autocommit=True,
    )
    error = None
    try:
        with conn.pipeline():
            cur = conn.cursor()
            for i in range(a.count):
                cur.execute("INSERT INTO pipe VALUES (%s)", (i,), prepare=True)
            for i in range(a.count):
                cur.execute("SELECT v FROM pipe WHERE v = %s", (i,), prepare=True)
            cur.execute("SELECT pg_sleep(1)")
            cur.execute("SELECT * FROM missing_pipe")
            for i in range(a.count):
                cur.execute("INSERT INTO pipe VALUES (%s)", (i,), prepare=True)
    except psycopg.Error as e:
        error = e.sqlstate
    rows = conn.execute("SELECT count(*) FROM pipe", prepare=True).fetchone()[0]
    conn.close()
    mt_common.emit("done", error=error, rows=rows)


if __name__ == "__main__":
    main()
