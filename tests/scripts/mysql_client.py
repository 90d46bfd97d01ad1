#!/usr/bin/env python3
"""A MySQL/MariaDB client for the protocol tests, through the real client libraries.

`mysql_client.py COMM --port P --mode text --inserts N --selects M --errors E` connects with
PyMySQL (the text protocol: COM_QUERY) to database `shop` and runs N INSERTs into `orders`, M
SELECTs from it and E SELECTs from the missing table `nope` (error 1146). PyMySQL sends
`SET NAMES` when it connects, and COM_QUIT when it closes.

`--mode prepared --executes K` connects with mysql-connector-python (pure Python, server-side
prepared statements): it sends `SET NAMES` and `SET @@session.autocommit`, a COM_PING, then one
COM_STMT_PREPARE, K times COM_STMT_RESET and COM_STMT_EXECUTE, COM_STMT_CLOSE and COM_QUIT.

Prints one `done` event with what it did.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mt_common  # noqa: E402

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402


def text(a):
    import pymysql

    c = pymysql.connect(host="127.0.0.1", port=a.port, user="root", database="shop", autocommit=None)
    errors = 0
    with c.cursor() as cur:
        for i in range(a.inserts):
            cur.execute(f"INSERT INTO orders (item, qty) VALUES ('secret-item-{i}', {i + 10})")
        for _ in range(a.selects):
            cur.execute("SELECT id, item FROM orders WHERE qty > 5")
            cur.fetchall()
        for _ in range(a.errors):
            try:
                cur.execute("SELECT * FROM nope")
            except pymysql.err.ProgrammingError as e:
                assert e.args[0] == 1146, e
                errors += 1
    c.close()
    return {"errors": errors}


def prepared(a):
    import mysql.connector

    c = mysql.connector.connect(
        host="127.0.0.1", port=a.port, user="root", database="shop", use_pure=True, autocommit=True
    )
    cur = c.cursor(prepared=True)
    rows = 0
    for i in range(a.executes):
        cur.execute("SELECT item, qty FROM orders WHERE id = ?", (i + 1,))
        rows += len(cur.fetchall())
    cur.close()
    c.close()
    return {"rows": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["text", "prepared"], required=True)
    p.add_argument("--inserts", type=int, default=0)
    p.add_argument("--selects", type=int, default=0)
    p.add_argument("--errors", type=int, default=0)
    p.add_argument("--executes", type=int, default=0)
    a = p.parse_args()
    result = text(a) if a.mode == "text" else prepared(a)
    mt_common.emit("done", comm=COMM, **result)


if __name__ == "__main__":
    main()
