#!/usr/bin/env python3
"""A TCP server for the meshtap integration tests.

usage: tcp_server.py COMM --bind ADDR [--port P] --mode MODE [--count N] [options]

Prints `{"event":"listening","port":P,...}` once listening, then handles `--count` connections
one after the other (all at once for `hold`) and prints `{"event":"done",...}` with the exact
sums of the syscall return values it saw.

modes:
  drain     read until EOF, then close
  close     accept and close at once (the server closes first)
  transfer  read until EOF, then send --download bytes, then close
  rr        repeatedly read exactly --request bytes and answer --response bytes, until EOF
  hold      accept --count connections, report each, then read each until EOF
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dual-stack", action="store_true", help="IPv6 socket that also accepts IPv4")
    p.add_argument("--mode", required=True, choices=["drain", "close", "transfer", "rr", "hold"])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--download", type=int, default=0)
    p.add_argument("--request", type=int, default=0)
    p.add_argument("--response", type=int, default=0)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--send-api", default="send", choices=["write", "send", "sendmsg32"])
    p.add_argument("--recv-api", default="recv", choices=["read", "recv", "recvmsg", "peek-recv", "peek-recvmsg"])
    a = p.parse_args()

    family = mt_common.family_of(a.bind)
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if a.dual_stack else 1)
    lsock.bind((a.bind, a.port))
    lsock.listen(4096)
    port = lsock.getsockname()[1]
    mt_common.emit("listening", port=port, comm=COMM)

    c = mt_common.Counter()
    accepted = 0
    if a.mode == "hold":
        conns = []
        for _ in range(a.count):
            conn, _ = lsock.accept()
            accepted += 1
            conns.append(conn)
            mt_common.emit(
                "accepted",
                local=mt_common.fmt_addr(conn.getsockname()),
                remote=mt_common.fmt_addr(conn.getpeername()),
            )
        sel = selectors.DefaultSelector()
        for conn in conns:
            sel.register(conn, selectors.EVENT_READ)
        open_conns = len(conns)
        while open_conns:
            for key, _ in sel.select():
                data = mt_common.recv_some(key.fileobj, a.recv_api, a.chunk, c)
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    open_conns -= 1
    else:
        rounds = 0
        for _ in range(a.count):
            conn, _ = lsock.accept()
            accepted += 1
            if a.mode == "close":
                conn.close()
                continue
            if a.mode == "drain":
                mt_common.recv_until_eof(conn, a.recv_api, a.chunk, c)
            elif a.mode == "transfer":
                mt_common.recv_until_eof(conn, a.recv_api, a.chunk, c)
                mt_common.send_bytes(conn, mt_common.payload(a.download, 7), a.send_api, a.chunk, c)
            elif a.mode == "rr":
                answer = mt_common.payload(a.response, 3)
                while mt_common.recv_exact(conn, a.request, a.recv_api, a.chunk, c):
                    mt_common.send_bytes(conn, answer, a.send_api, a.chunk, c)
                    rounds += 1
            conn.close()
        if a.mode == "rr":
            mt_common.emit("rounds", rounds=rounds)
    lsock.close()
    mt_common.emit("done", accepted=accepted, **c.as_dict())


if __name__ == "__main__":
    sys.exit(main())
