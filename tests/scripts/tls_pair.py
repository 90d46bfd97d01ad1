#!/usr/bin/env python3
"""A real TLS connection on loopback, both ends in this process, for the meshtap tests.

usage: tls_pair.py COMM --rounds N --request BYTES --response BYTES

A server thread and the client (main thread) speak TLS (a certificate made with `openssl` in a
temporary directory) through `ssl.SSLObject` over plain sockets, so that every raw `send` and
`recv` is made here and counted: the agent sees the TLS records, never the plaintext. After
the handshake the client sends --rounds requests of --request bytes, each answered with
--response bytes. Prints `{"event":"done","client":{...},"server":{...}}` where each end has
`sent`, `received` (raw bytes on the socket), `send_calls` and `recv_calls` (syscalls that
moved at least one byte), and the server's `port`.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402


class End:
    """One TLS end over a raw socket, counting the raw syscalls."""

    def __init__(self, sock, context, server_side):
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else "localhost",
        )
        self.c = mt_common.Counter()

    def flush(self):
        data = self.outgoing.read()
        while data:
            n = self.sock.send(data)
            self.c.sent += n
            self.c.send_calls += 1
            data = data[n:]

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.c.received += len(data)
        self.c.recv_calls += 1
        self.incoming.write(data)

    def handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()

    def write(self, data):
        self.tls.write(data)
        self.flush()

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                buf += self.tls.read(n - len(buf))
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
        return buf


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--request", type=int, required=True)
    p.add_argument("--response", type=int, required=True)
    a = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="mt-tls-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    result = {}

    def serve():
        conn, _ = listener.accept()
        end = End(conn, server_ctx, True)
        end.handshake()
        answer = mt_common.payload(a.response, 3)
        for _ in range(a.rounds):
            end.read_exact(a.request)
            end.write(answer)
        try:
            while True:
                end.fill()
        except (EOFError, ConnectionError):
            pass
        conn.close()
        result["server"] = end.c.as_dict()

    t = threading.Thread(target=serve)
    t.start()
    sock = socket.create_connection(("127.0.0.1", port))
    end = End(sock, client_ctx, False)
    end.handshake()
    request = mt_common.payload(a.request, 1)
    for _ in range(a.rounds):
        end.write(request)
        end.read_exact(a.response)
    sock.close()
    t.join()
    listener.close()
    for f in (cert, key):
        os.unlink(f)
    os.rmdir(tmp)
    client = end.c.as_dict()
    server = result["server"]
    server["port"] = port
    mt_common.emit("done", client=client, server=server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
