#!/usr/bin/env python3
"""TCP fault programs for the meshtap integration tests (tests/tests/tcp_faults.rs).

usage: tcp_faults.py COMM --mode MODE [options]

Prints `{"event":"done",...}` with what it actually did.

modes:
  backlog0   (server) listen on --bind/--port with listen(0) and never accept; print
             `listening`, then wait for a line on stdin and exit. Once one connection has
             completed its handshake the accept queue is full and further SYNs are dropped
             silently (with net.ipv4.tcp_syncookies=0).
  nb-connect (client) --count times: a non-blocking connect to --host/--port (connect_ex ->
             EINPROGRESS), select() until writable, getsockopt(SO_ERROR); count the errnos
             ("OK" for a connection made), close.
  sendfile   (client) write --size bytes to a temporary file, connect, send the file with
             socket.sendfile() (os.sendfile), shut down writing, read until EOF, close.
  cue-write  (client) connect, print `connected`; on a stdin line write --size bytes and print
             `wrote`; on the next stdin line wait until every byte is acknowledged and print
             `acked` with TCP_INFO's total retransmits; on the next stdin line close.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import errno  # noqa: E402
import fcntl  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes not yet acknowledged by the peer (TCP)
# struct tcp_info: 8 bytes of u8 fields, then u32 fields; tcpi_total_retrans is the 24th u32
# (index 23, after rcv_rtt and rcv_space), see include/uapi/linux/tcp.h.
TCP_INFO_TOTAL_RETRANS = 8 + 4 * 23


def errno_name(code):
    return errno.errorcode.get(code, str(code))


def total_retrans(sock):
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, TCP_INFO_TOTAL_RETRANS)[0]


def unacked(sock):
    buf = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--mode", required=True,
                   choices=["backlog0", "nb-connect", "sendfile", "cue-write"])
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()

    fields = {}
    if a.mode == "backlog0":
        lsock = socket.socket(mt_common.family_of(a.bind), socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((a.bind, a.port))
        lsock.listen(0)
        mt_common.emit("listening", port=lsock.getsockname()[1], comm=COMM)
        sys.stdin.readline()
        lsock.close()
    elif a.mode == "nb-connect":
        family = mt_common.family_of(a.host)
        errnos = {}
        in_progress = 0
        for _ in range(a.count):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((a.host, a.port))
            if rc == errno.EINPROGRESS:
                in_progress += 1
                _, writable, _ = select.select([], [s], [], a.timeout)
                if not writable:
                    raise SystemExit("non-blocking connect did not complete in time")
                rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            name = "OK" if rc == 0 else errno_name(rc)
            errnos[name] = errnos.get(name, 0) + 1
            s.close()
        fields["errnos"] = errnos
        fields["in_progress"] = in_progress
    elif a.mode == "sendfile":
        family = mt_common.family_of(a.host)
        with tempfile.TemporaryFile() as f:
            f.write(mt_common.payload(a.size, 9))
            f.flush()
            f.seek(0)
            s = socket.socket(family, socket.SOCK_STREAM)
            s.connect((a.host, a.port))
            sent = s.sendfile(f)
            s.shutdown(socket.SHUT_WR)
            received = 0
            while True:
                data = s.recv(65536)
                if not data:
                    break
                received += len(data)
            s.close()
        fields["sent"] = sent
        fields["received"] = received
    elif a.mode == "cue-write":
        family = mt_common.family_of(a.host)
        s = socket.socket(family, socket.SOCK_STREAM)
        s.connect((a.host, a.port))
        mt_common.emit("connected", local=mt_common.fmt_addr(s.getsockname()),
                       remote=mt_common.fmt_addr(s.getpeername()),
                       total_retrans=total_retrans(s))
        sys.stdin.readline()
        data = mt_common.payload(a.size, 4)
        sent = 0
        while sent < len(data):
            sent += s.send(data[sent:])
        mt_common.emit("wrote", sent=sent, unacked=unacked(s))
        sys.stdin.readline()
        deadline = time.monotonic() + a.timeout
        while unacked(s) != 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"{unacked(s)} bytes still unacknowledged after {a.timeout}s")
            time.sleep(0.01)
        mt_common.emit("acked", total_retrans=total_retrans(s))
        sys.stdin.readline()
        s.close()
        fields["sent"] = sent
    mt_common.emit("done", **fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
