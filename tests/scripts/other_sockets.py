#!/usr/bin/env python3
"""UDP and Unix-domain traffic, then one TCP connection, all from one process.

usage: other_sockets.py COMM --rounds N --size S --tcp-bytes B

The agent must count only the TCP connection: the UDP datagrams (sendto/recvfrom, send/recv,
sendmsg/recvmsg) and the Unix stream traffic (write/read, writev/readv, send/recv,
sendmsg/recvmsg) go through the same syscalls its programs hook. The TCP connection is made to
a listener in this same process, so both of its ends have this process's name.

Prints `{"event":"done",...}` with the exact sums of the syscall return values.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402


def recv_exact(sock, n):
    got = 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise SystemExit("unexpected EOF")
        got += len(chunk)
    return got


def udp_traffic(rounds, data):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = received = 0
    for _ in range(rounds):
        sent += tx.sendto(data, rx.getsockname())
        received += len(rx.recvfrom(65536)[0])
    tx.connect(rx.getsockname())
    for _ in range(rounds):
        sent += tx.send(data)
        received += len(rx.recv(65536))
        sent += tx.sendmsg([data])
        received += len(rx.recvmsg(65536)[0])
    tx.close()
    rx.close()
    return sent, received


def unix_traffic(rounds, data):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sent = received = 0
    half = len(data) // 2
    for _ in range(rounds):
        sent += os.write(a.fileno(), data)
        received += recv_exact(b, len(data))
        sent += os.writev(a.fileno(), [data[:half], data[half:]])
        n = 0
        while n < len(data):
            n += os.readv(b.fileno(), [bytearray(len(data) - n)])
        received += n
        sent += a.send(data)
        received += recv_exact(b, len(data))
        sent += a.sendmsg([data])
        n = 0
        while n < len(data):
            n += len(b.recvmsg(len(data) - n)[0])
        received += n
    a.close()
    b.close()
    return sent, received


def tcp_connection(nbytes):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    listener.close()
    data = mt_common.payload(nbytes)
    c_sent = s_recv = 0
    while c_sent < nbytes:
        c_sent += client.send(data[c_sent:])
    s_recv = recv_exact(server, nbytes)
    s_sent = server.send(b"done")
    c_recv = recv_exact(client, 4)
    client.close()
    server.close()
    return port, c_sent, c_recv, s_sent, s_recv


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tcp-bytes", type=int, default=10000)
    args = p.parse_args()
    data = mt_common.payload(args.size)
    udp_sent, udp_received = udp_traffic(args.rounds, data)
    unix_sent, unix_received = unix_traffic(args.rounds, data)
    port, c_sent, c_recv, s_sent, s_recv = tcp_connection(args.tcp_bytes)
    mt_common.emit(
        "done",
        udp_sent=udp_sent,
        udp_received=udp_received,
        unix_sent=unix_sent,
        unix_received=unix_received,
        port=port,
        client_sent=c_sent,
        client_received=c_recv,
        server_sent=s_sent,
        server_received=s_recv,
    )


if __name__ == "__main__":
    main()
