#!/usr/bin/env python3
"""A TCP client for the meshtap integration tests.

usage: tcp_client.py COMM --host H --port P --mode MODE [--count N] [options]

Prints `{"event":"done",...}` with what it actually did: connections made, the exact sums of
the syscall return values, errno counts of failed connects.

modes:
  connect-close  N times: connect, close
  connect-eof    N times: connect, read until the server closes, close (the server closes first)
  refused        N times: connect to a port nobody listens on; count the errnos
  transfer       connect, send --upload bytes, shut down writing, read until EOF, close
  rr             connect, --rounds times send --request bytes and read --response bytes, close
  hold           open --count connections (sending --upload bytes on each), report them, wait
                 for a line on stdin, close them
With --wait-go the client prints `{"event":"ready"}` and waits for a line on stdin first.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import errno  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402


def connect(family, host, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.connect((host, port))
    return s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", required=True,
                   choices=["connect-close", "connect-eof", "refused", "transfer", "rr", "hold"])
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--upload", type=int, default=0)
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--request", type=int, default=0)
    p.add_argument("--response", type=int, default=0)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--send-api", default="send", choices=["write", "send", "sendmsg32"])
    p.add_argument("--recv-api", default="recv", choices=["read", "recv", "recvmsg", "peek-recv", "peek-recvmsg"])
    p.add_argument("--wait-go", action="store_true")
    a = p.parse_args()

    if a.wait_go:
        mt_common.emit("ready", comm=COMM)
        if not sys.stdin.readline():
            return 0

    family = mt_common.family_of(a.host)
    c = mt_common.Counter()
    fields = {}
    opened = 0
    if a.mode == "connect-close":
        for _ in range(a.count):
            connect(family, a.host, a.port).close()
            opened += 1
    elif a.mode == "connect-eof":
        for _ in range(a.count):
            s = connect(family, a.host, a.port)
            opened += 1
            if s.recv(1) != b"":
                raise SystemExit("server sent data")
            s.close()
    elif a.mode == "refused":
        errnos = {}
        for _ in range(a.count):
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.connect((a.host, a.port))
                opened += 1
            except OSError as e:
                name = errno.errorcode.get(e.errno, str(e.errno))
                errnos[name] = errnos.get(name, 0) + 1
            finally:
                s.close()
        fields["errnos"] = errnos
    elif a.mode == "transfer":
        s = connect(family, a.host, a.port)
        opened += 1
        mt_common.send_bytes(s, mt_common.payload(a.upload, 1), a.send_api, a.chunk, c)
        s.shutdown(socket.SHUT_WR)
        mt_common.recv_until_eof(s, a.recv_api, a.chunk, c)
        s.close()
    elif a.mode == "rr":
        s = connect(family, a.host, a.port)
        opened += 1
        request = mt_common.payload(a.request, 5)
        for _ in range(a.rounds):
            mt_common.send_bytes(s, request, a.send_api, a.chunk, c)
            if not mt_common.recv_exact(s, a.response, a.recv_api, a.chunk, c):
                raise SystemExit("server closed early")
        s.close()
    elif a.mode == "hold":
        socks = []
        for _ in range(a.count):
            s = connect(family, a.host, a.port)
            opened += 1
            if a.upload:
                mt_common.send_bytes(s, mt_common.payload(a.upload, 2), a.send_api, a.chunk, c)
            socks.append(s)
        mt_common.emit(
            "connected",
            conns=[
                {"local": mt_common.fmt_addr(s.getsockname()),
                 "remote": mt_common.fmt_addr(s.getpeername())}
                for s in socks
            ],
        )
        sys.stdin.readline()
        for s in socks:
            s.close()
    mt_common.emit("done", opened=opened, **c.as_dict(), **fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
