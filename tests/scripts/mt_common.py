"""Helpers shared by the meshtap integration-test scripts.

Every script calls `set_comm` as its very first statement (before importing this module's other
helpers matters little, but the name must be set before any socket is created) so that the agent
attributes all of its connections to a name unique to one test.
"""

import ctypes
import json
import os
import socket
import sys

PR_SET_NAME = 15


def set_comm_from_argv():
    """Set the process name (comm, at most 15 bytes) to argv[1] and return it."""
    name = sys.argv[1].encode()
    if len(name) > 15:
        raise SystemExit(f"comm {sys.argv[1]!r} is longer than 15 bytes")
    if ctypes.CDLL(None).prctl(PR_SET_NAME, name, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_NAME) failed")
    return sys.argv[1]


def emit(event, **fields):
    """Print one machine-readable result line (JSON) and flush it."""
    fields["event"] = event
    fields.setdefault("pid", os.getpid())
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def fmt_addr(sockaddr):
    """Format a socket address the way the agent's API does: `ip:port` or `[ip6]:port`."""
    host, port = sockaddr[0], sockaddr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def payload(size, seed=0):
    """Deterministic bytes of the given size."""
    pattern = bytes((seed + i) % 251 for i in range(251))
    reps = size // len(pattern) + 1
    return (pattern * reps)[:size]


def iov_sizes(count=32, base=97):
    """Distinct iovec sizes: base*1, base*2, ... base*count."""
    return [base * (i + 1) for i in range(count)]


class Counter:
    """Sums of syscall return values, per direction, plus how many syscalls were made."""

    def __init__(self):
        self.sent = 0
        self.received = 0
        self.send_calls = 0
        self.recv_calls = 0

    def as_dict(self):
        return {
            "sent": self.sent,
            "received": self.received,
            "send_calls": self.send_calls,
            "recv_calls": self.recv_calls,
        }


def send_bytes(sock, data, api, chunk, counter):
    """Send all of `data` with the named API; count each syscall's return value."""
    view = memoryview(data)
    if api == "sendmsg32":
        sizes = iov_sizes()
        while len(view) > 0:
            bufs = []
            offset = 0
            for size in sizes:
                if offset >= len(view):
                    break
                bufs.append(view[offset : offset + size])
                offset += size
            n = sock.sendmsg(bufs)
            counter.sent += n
            counter.send_calls += 1
            view = view[n:]
        return
    while len(view) > 0:
        part = view[:chunk]
        if api == "write":
            n = os.write(sock.fileno(), part)
        elif api == "send":
            n = sock.send(part)
        else:
            raise SystemExit(f"unknown send api {api}")
        counter.sent += n
        counter.send_calls += 1
        view = view[n:]


def recv_some(sock, api, chunk, counter):
    """One read syscall with the named API; returns the bytes read (b'' at EOF)."""
    if api == "read":
        data = os.read(sock.fileno(), chunk)
    elif api == "recv":
        data = sock.recv(chunk)
    elif api == "recvmsg":
        half = max(1, chunk // 2)
        bufs = [bytearray(half), bytearray(chunk - half)]
        n, _, _, _ = sock.recvmsg_into(bufs)
        data = bytes((bufs[0] + bufs[1])[:n])
    elif api == "peek-recv":
        # recvfrom(2) with MSG_PEEK first (the bytes stay queued), then the read that takes
        # them: only the second is counted.
        sock.recv(chunk, socket.MSG_PEEK)
        data = sock.recv(chunk)
    elif api == "peek-recvmsg":
        sock.recvmsg_into([bytearray(chunk)], 0, socket.MSG_PEEK)
        bufs = [bytearray(chunk)]
        n, _, _, _ = sock.recvmsg_into(bufs)
        data = bytes(bufs[0][:n])
    else:
        raise SystemExit(f"unknown recv api {api}")
    counter.recv_calls += 1
    counter.received += len(data)
    return data


def recv_exact(sock, size, api, chunk, counter):
    """Read exactly `size` bytes; returns False on EOF before any byte."""
    got = 0
    while got < size:
        data = recv_some(sock, api, min(chunk, size - got), counter)
        if not data:
            if got == 0:
                return False
            raise SystemExit(f"EOF after {got} of {size} bytes")
        got += len(data)
    return True


def recv_until_eof(sock, api, chunk, counter):
    total = 0
    while True:
        data = recv_some(sock, api, chunk, counter)
        if not data:
            return total
        total += len(data)
