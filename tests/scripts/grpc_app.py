#!/usr/bin/env python3
"""A gRPC server and client on grpcio (the real gRPC C core under Python), for the HTTP/2 and gRPC
tests. No generated code: generic handlers and raw-bytes (de)serialisers, so that no .proto has to
be compiled; on the wire it is the same gRPC as any generated stub's.

usage: grpc_app.py COMM server [--bind ADDR] [--port P] [--workers W]
       grpc_app.py COMM client --port P [--host H] [plan options]

The service is `meshtap.test.Echo`:
  Unary         unary-unary. Request `ok` -> `ok`; `code:N` -> aborts with status N;
                `sleep:MS` -> answers `ok` after MS milliseconds.
  ServerStream  unary-stream. Request `n:K` -> K messages.
  ClientStream  stream-unary. Answers the number of messages received.
  Bidi          stream-stream. Echoes every message.
`Missing` is not registered: grpcio answers UNIMPLEMENTED (12) for it.

The server prints `{"event":"listening","port":P}` and serves until a line `stop` arrives on stdin
(or stdin closes), then prints `{"event":"done","served":{method: count}}`.

The client makes, in this order, on ONE channel (one HTTP/2 connection):
  --unary N          N `ok` unary calls
  --codes C,C,...    one unary call aborted with each listed status code (repeat a code to call
                     it more than once)
  --server-stream N  N server-streaming calls of --messages K messages each
  --client-stream N  N client-streaming calls of --messages K messages each
  --bidi N           N bidirectional calls of --messages K messages each
  --missing N        N unary calls of the unregistered method `Missing`
  --deadline N       N unary calls `sleep:--sleep-ms` with a deadline of --timeout-ms
  --concurrent N     N `ok` unary calls started at once (futures), then all awaited
  --traced N         N `ok` unary calls, each with a fresh W3C `traceparent` metadata entry
  --b3 N             N `ok` unary calls, each with fresh `x-b3-traceid` / `x-b3-spanid` /
                     `x-b3-sampled: 1` metadata entries
then, with --hold, prints `{"event":"ready"}` and waits for a line on stdin (`go`: repeat the
whole plan once more on the same channel; anything else or EOF: go on) before closing; then
  --fresh N          N server-streaming calls on a NEW channel (a second connection)

It prints `{"event":"done","calls":{"/meshtap.test.Echo/M":{"CODE":count}},
"traced":[{"trace","span","code"}], "b3":[{"trace","span","code"}]}`, the codes as gRPC status
numbers (0 = OK) as the client library reported them.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import collections  # noqa: E402
import secrets  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent import futures  # noqa: E402

import grpc  # noqa: E402

SERVICE = "meshtap.test.Echo"


def path(method):
    return f"/{SERVICE}/{method}"


def ident(b):
    return b


class Served:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def add(self, method):
        with self.lock:
            self.counts[path(method)] += 1


def serve(args):
    served = Served()

    def unary(request, context):
        served.add("Unary")
        if request.startswith(b"code:"):
            code = int(request[5:])
            status = next(s for s in grpc.StatusCode if s.value[0] == code)
            context.abort(status, f"asked for {status.name}")
        if request.startswith(b"sleep:"):
            time.sleep(int(request[6:]) / 1000)
        return b"ok"

    def server_stream(request, context):
        served.add("ServerStream")
        n = int(request[2:])
        for i in range(n):
            yield f"message {i}".encode()

    def client_stream(request_iterator, context):
        served.add("ClientStream")
        return str(sum(1 for _ in request_iterator)).encode()

    def bidi(request_iterator, context):
        served.add("Bidi")
        for m in request_iterator:
            yield m

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, ident, ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{args.bind}:{args.port}")
    server.start()
    mt_common.emit("listening", port=port)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    server.stop(grace=2).wait()
    mt_common.emit("done", served=dict(served.counts))


def code_of(e):
    return e.code().value[0]


class Calls:
    def __init__(self):
        self.counts = collections.defaultdict(collections.Counter)
        self.traced = []
        self.b3 = []

    def add(self, method, code):
        self.counts[path(method)][str(code)] += 1


def unary_call(channel, calls, request, method="Unary", timeout=None, metadata=None):
    stub = channel.unary_unary(path(method), request_serializer=ident, response_deserializer=ident)
    try:
        stub(request, timeout=timeout, metadata=metadata)
        code = 0
    except grpc.RpcError as e:
        code = code_of(e)
    calls.add(method, code)
    return code


def run_plan(channel, args, calls):
    for _ in range(args.unary):
        unary_call(channel, calls, b"ok")
    for c in [int(c) for c in args.codes.split(",") if c]:
        got = unary_call(channel, calls, f"code:{c}".encode())
        if got != c:
            raise SystemExit(f"asked for status {c}, got {got}")
    server_stream = channel.unary_stream(
        path("ServerStream"), request_serializer=ident, response_deserializer=ident
    )
    for _ in range(args.server_stream):
        got = list(server_stream(f"n:{args.messages}".encode()))
        if len(got) != args.messages:
            raise SystemExit(f"server stream: {len(got)} messages")
        calls.add("ServerStream", 0)
    client_stream = channel.stream_unary(
        path("ClientStream"), request_serializer=ident, response_deserializer=ident
    )
    for _ in range(args.client_stream):
        got = client_stream(iter([b"m"] * args.messages))
        if got != str(args.messages).encode():
            raise SystemExit(f"client stream: {got!r}")
        calls.add("ClientStream", 0)
    bidi = channel.stream_stream(
        path("Bidi"), request_serializer=ident, response_deserializer=ident
    )
    for _ in range(args.bidi):
        got = list(bidi(iter([b"hello"] * args.messages)))
        if len(got) != args.messages:
            raise SystemExit(f"bidi: {len(got)} messages")
        calls.add("Bidi", 0)
    for _ in range(args.missing):
        unary_call(channel, calls, b"ok", method="Missing")
    for _ in range(args.deadline):
        unary_call(
            channel, calls, f"sleep:{args.sleep_ms}".encode(), timeout=args.timeout_ms / 1000
        )
    if args.concurrent:
        stub = channel.unary_unary(
            path("Unary"), request_serializer=ident, response_deserializer=ident
        )
        pending = [stub.future(b"ok") for _ in range(args.concurrent)]
        for f in pending:
            try:
                f.result()
                calls.add("Unary", 0)
            except grpc.RpcError as e:
                calls.add("Unary", code_of(e))
    for _ in range(args.traced):
        trace, span = secrets.token_hex(16), secrets.token_hex(8)
        code = unary_call(
            channel, calls, b"ok", metadata=(("traceparent", f"00-{trace}-{span}-01"),)
        )
        calls.traced.append({"trace": trace, "span": span, "code": code})
    for _ in range(args.b3):
        trace, span = secrets.token_hex(16), secrets.token_hex(8)
        code = unary_call(
            channel,
            calls,
            b"ok",
            metadata=(("x-b3-traceid", trace), ("x-b3-spanid", span), ("x-b3-sampled", "1")),
        )
        calls.b3.append({"trace": trace, "span": span, "code": code})


def client(args):
    calls = Calls()
    # One subchannel, one connection: no retries that would add streams the test did not ask for.
    options = [("grpc.enable_retries", 0), ("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"{args.host}:{args.port}", options=options) as channel:
        run_plan(channel, args, calls)
        if args.hold:
            mt_common.emit("ready", calls={k: dict(v) for k, v in calls.counts.items()})
            line = sys.stdin.readline().strip()
            if line == "go":
                run_plan(channel, args, calls)
    if args.fresh:
        with grpc.insecure_channel(f"{args.host}:{args.port}", options=options) as channel:
            stream = channel.unary_stream(
                path("ServerStream"), request_serializer=ident, response_deserializer=ident
            )
            for _ in range(args.fresh):
                got = list(stream(f"n:{args.messages}".encode()))
                if len(got) != args.messages:
                    raise SystemExit(f"server stream: {len(got)} messages")
                calls.add("ServerStream", 0)
    mt_common.emit(
        "done",
        calls={k: dict(v) for k, v in calls.counts.items()},
        traced=calls.traced,
        b3=calls.b3,
    )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--workers", type=int, default=16)
    c = sub.add_parser("client")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, required=True)
    for name in (
        "unary", "server-stream", "client-stream", "bidi", "missing", "deadline", "concurrent",
        "traced", "b3", "fresh",
    ):
        c.add_argument(f"--{name}", type=int, default=0)
    c.add_argument("--codes", default="")
    c.add_argument("--messages", type=int, default=3)
    c.add_argument("--sleep-ms", type=int, default=400)
    c.add_argument("--timeout-ms", type=int, default=100)
    c.add_argument("--hold", action="store_true")
    args = p.parse_args(sys.argv[2:])
    if args.mode == "server":
        serve(args)
    else:
        client(args)


if __name__ == "__main__":
    main()
