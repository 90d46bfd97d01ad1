"""Drives Redis (redis-py) or Memcached (pymemcache, and raw commands it does not send) with a
known list of commands, for tests/tests/db_caches.rs.

    cache_client.py COMM redis PORT MESSAGES
    cache_client.py COMM memcached PORT

Prints one `done` event with what it observed (messages received, hits), then exits 0.
"""

from mt_common import set_comm_from_argv, emit

set_comm_from_argv()

import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def redis_scenario(port, messages):
    import redis

    # No CLIENT SETINFO on connect (Redis 7.0 answers it with an error).
    opts = dict(host="127.0.0.1", port=port, protocol=2, lib_name=None, lib_version=None)
    r = redis.Redis(**opts)
    r.set("it:str", "secret-value")  # SET
    for cmd in (lambda: r.incr("it:str"), lambda: r.lpush("it:str", "a")):
        try:
            cmd()  # INCR -> ERR, LPUSH -> WRONGTYPE
            raise SystemExit("expected an error reply")
        except redis.ResponseError:
            pass
    p = r.pipeline(transaction=True)  # MULTI, INCR, LPUSH, EXEC in one write
    p.incr("it:cnt")
    p.lpush("it:list", "a")
    p.execute()

    # Database 3: SELECT 3 on connect, then SET and GET.
    r3 = redis.Redis(db=3, **opts)
    r3.set("it:k", "v")
    assert r3.get("it:k") == b"v"

    # A subscriber receiving `messages` messages: SUBSCRIBE, then UNSUBSCRIBE.
    sub = r.pubsub()
    sub.subscribe("it:news")
    got = sub.get_message(timeout=5)
    assert got and got["type"] == "subscribe", got
    for i in range(messages):
        r.publish("it:news", f"message {i}")  # PUBLISH
    received = 0
    deadline = time.time() + 10
    while received < messages and time.time() < deadline:
        m = sub.get_message(timeout=1)
        if m and m["type"] == "message":
            received += 1
    sub.unsubscribe("it:news")
    got = sub.get_message(timeout=5)
    assert got and got["type"] == "unsubscribe", got
    sub.close()
    r3.close()
    r.close()
    emit("done", received=received)


def raw(port, data, until):
    """Sends `data` on a new connection and reads until the reply ends with `until`."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(data)
    buf = b""
    while not buf.endswith(until):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf


def memcached_scenario(port):
    from pymemcache.client.base import Client

    c = Client(("127.0.0.1", port))
    for i in range(1, 6):
        c.set(f"k{i}", f"value-{i}")  # set ... noreply (pymemcache's default)
    many = c.get_many(["k1", "k2", "k3", "x1", "x2"])  # one get: 3 hits, 2 misses
    assert len(many) == 3, many
    assert c.get("k1") is not None  # get: a hit
    assert c.get("nope") is None  # get: a miss
    assert c.add("k1", "again", noreply=False) is False  # add: NOT_STORED
    assert c.incr("n", 1) is None  # incr: NOT_FOUND
    c.set("n", "10", noreply=False)  # set: STORED
    assert c.incr("n", 5) == 15
    assert c.decr("n", 3) == 12
    assert c.delete("k2", noreply=False) is True  # delete: DELETED
    assert c.touch("k1", 100, noreply=False) is True  # touch: TOUCHED
    c.stats()  # stats: STAT lines until END
    c.version()  # version
    c.close()
    # What pymemcache does not send: an unknown command, a malformed one, meta commands. On one
    # connection that starts with a command: a first line that is no command is no protocol.
    replies = raw(port, b"version\r\nbogus\r\nset k 0 0 z\r\nmg k1 v\r\nmg x9 v\r\nmn\r\n", b"MN\r\n")
    lines = replies.split(b"\r\n")
    assert lines[1] == b"ERROR" and lines[2].startswith(b"CLIENT_ERROR"), replies
    assert lines[3].startswith(b"VA ") and lines[5:] == [b"EN", b"MN", b""], replies
    emit("done")


def main():
    mode, port = sys.argv[2], int(sys.argv[3])
    if mode == "redis":
        redis_scenario(port, int(sys.argv[4]))
    else:
        memcached_scenario(port)


main()
