#!/usr/bin/env python3
"""Checks kube_api.py against what a kube-apiserver client relies on: lists (paging, field and
label selectors, items without kind), watches (events after a resourceVersion, selector
transitions, bookmarks, the timeout's clean end, 410 Expired for a compacted resourceVersion,
synthetic ADDED from "0"), single GETs, the control interface (apply, graceful delete, stop with
watches cut and connections refused, start again on the same port, compaction, injected
failures) and the exact requests a kube-rs watcher makes.

usage: kube_api_check.py COMM --fixtures DIR

Exits 0 and prints `{"event":"done","checks":N}` when every check passes; otherwise exits 1
with the failing check on stderr.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

CHECKS = 0


def check(ok, what):
    global CHECKS
    CHECKS += 1
    if not ok:
        raise AssertionError(what)


class Api:
    def __init__(self, fixtures, extra=()):
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.join(here, "kube_api.py"), "chk-kube-api",
             "--fixtures", fixtures, "--bookmark-seconds", "0.3", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline())
        self.port = hello["port"]
        self.control_port = hello["control_port"]
        self.rv = int(hello["resource_version"])

    def close(self):
        self.proc.stdin.close()
        done = json.loads(self.proc.stdout.readline())
        self.proc.wait(10)
        return done

    def get(self, path, timeout=5):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("GET", path, headers={"Accept": "application/json"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, r.getheader("Content-Type"), json.loads(body) if body else None

    def control(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = json.loads(r.read())
        c.close()
        return r.status, out


class Watch:
    """A watch request read on a thread: events are collected as they arrive."""

    def __init__(self, api, path):
        self.events = []
        self.ended = None  # "clean" (terminating chunk) or "cut" (connection ended mid-stream)
        self.status = None
        self.headers = None
        self.lock = threading.Lock()
        self.sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode())
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        f = self.sock.makefile("rb")
        try:
            line = f.readline()
            self.status = int(line.split()[1])
            headers = {}
            while True:
                line = f.readline().decode().strip()
                if not line:
                    break
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
            self.headers = headers
            while True:
                size_line = f.readline()
                if not size_line:
                    self.ended = "cut"
                    return
                size = int(size_line.strip(), 16)
                if size == 0:
                    f.readline()
                    self.ended = "clean"
                    return
                data = f.read(size)
                f.read(2)
                if len(data) < size:
                    self.ended = "cut"
                    return
                check(data.endswith(b"\n"), f"watch chunk does not end with a newline: {data!r}")
                with self.lock:
                    self.events.append(json.loads(data))
        except (OSError, ValueError):
            self.ended = "cut"

    def wait(self, cond, what, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if cond(list(self.events)):
                    return list(self.events)
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"{what}: events {self.events}, ended {self.ended}")

    def wait_end(self, timeout=10):
        self.thread.join(timeout)
        check(not self.thread.is_alive(), "watch did not end")
        return self.ended

    def typed(self, skip_bookmarks=True):
        with self.lock:
            return [(e["type"], e["object"]["metadata"].get("name"))
                    for e in self.events if not (skip_bookmarks and e["type"] == "BOOKMARK")]


def names(lst):
    return [i["metadata"]["name"] for i in lst["items"]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--fixtures", required=True)
    a = p.parse_args()
    api = Api(a.fixtures)
    node_sel = "fieldSelector=spec.nodeName%3Dnode-a"

    # Lists, as the kube-rs watcher asks for them.
    st, ctype, lst = api.get(f"/api/v1/pods?&{node_sel}&limit=500")
    check(st == 200 and ctype == "application/json", f"list status {st} {ctype}")
    check(lst["kind"] == "PodList" and lst["apiVersion"] == "v1", f"list kind {lst['kind']}")
    check(lst["metadata"] == {"resourceVersion": str(api.rv)}, f"list metadata {lst['metadata']}")
    node_a = names(lst)
    check(len(node_a) == 5 and "web-0" in node_a and "payments-6c9d7b5f4-mz8vq" not in node_a,
          f"node-a pods {node_a}")
    check(all("kind" not in i and "apiVersion" not in i for i in lst["items"]),
          "list items carry no kind/apiVersion")
    check(all(i["spec"]["nodeName"] == "node-a" for i in lst["items"]), "field selector")
    st, _, all_pods = api.get("/api/v1/pods?&limit=500")
    check(len(all_pods["items"]) == 8, f"all pods {names(all_pods)}")
    st, _, ne = api.get("/api/v1/pods?fieldSelector=spec.nodeName!%3Dnode-a")
    check(sorted(names(ne)) == ["coredns-76f75df574-2xkqj", "kube-proxy-7xk9p",
                                "payments-6c9d7b5f4-mz8vq"],
          f"!= selector {names(ne)}")
    st, _, lab = api.get("/api/v1/pods?labelSelector=app%20in%20(api,web),!job-name")
    check(sorted(names(lab)) == ["api-7d9f8b6c5d-x2x9k", "web-0"], f"label selector {names(lab)}")
    st, _, bad = api.get("/api/v1/pods?fieldSelector=spec.bogus%3D1")
    check(st == 400 and bad["code"] == 400 and bad["kind"] == "Status", f"bad selector {st}")
    for path, kind, n in [("/api/v1/services", "ServiceList", 4),
                          ("/apis/apps/v1/replicasets", "ReplicaSetList", 4),
                          ("/api/v1/namespaces", "NamespaceList", 5),
                          ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList", 0),
                          ("/api/v1/namespaces/shop/pods", "PodList", 4)]:
        st, _, lst = api.get(path + "?&limit=500")
        check(st == 200 and lst["kind"] == kind and len(lst["items"]) == n,
              f"{path}: {st} {lst.get('kind')} {len(lst.get('items', []))}")

    # Paging: limit and continue give every item once, at one resourceVersion.
    seen, token, pages = [], None, 0
    while True:
        q = "limit=2" + (f"&continue={token}" if token else "")
        st, _, page = api.get(f"/api/v1/pods?{q}")
        check(st == 200 and page["metadata"]["resourceVersion"] == str(api.rv), f"page {page}")
        seen += names(page)
        pages += 1
        token = page["metadata"].get("continue")
        if not token:
            break
        check(page["metadata"]["remainingItemCount"] == 8 - len(seen), "remainingItemCount")
    check(pages == 4 and sorted(seen) == sorted(names(all_pods)), f"paged {pages} {seen}")

    # GET one object, and the 404s.
    st, _, obj = api.get("/api/v1/namespaces/shop/pods/web-0")
    check(st == 200 and obj["kind"] == "Pod" and obj["metadata"]["name"] == "web-0", "get pod")
    st, _, obj = api.get("/apis/apps/v1/namespaces/shop/replicasets/api-7d9f8b6c5d")
    check(st == 200 and obj["metadata"]["ownerReferences"][0]["kind"] == "Deployment", "get rs")
    st, _, obj = api.get("/api/v1/namespaces/shop/pods/nope")
    check(st == 404 and obj["reason"] == "NotFound", f"get missing {st}")
    st, _, obj = api.get("/apis/apps/v1/frobs")
    check(st == 404 and obj["kind"] == "Status", f"unknown resource {st}")
    st, _, ver = api.get("/version")
    check(st == 200 and ver["major"] == "1", "version")

    # A watch from the list's resourceVersion sees the changes after it, in order, with the
    # selector applied: a pod of another node is not seen; a graceful delete is MODIFIED,
    # MODIFIED, DELETED; rv increases.
    w = Watch(api, f"/api/v1/pods?&watch=true&timeoutSeconds=3&allowWatchBookmarks=true"
                   f"&resourceVersion={api.rv}&{node_sel}")
    with open(os.path.join(os.path.dirname(a.fixtures.rstrip("/")), "changes", "fraud.json")) as f:
        fraud = json.load(f)
    st, out = api.control("POST", "/apply", fraud)
    check(st == 200 and [e["type"] for e in out["events"]] == ["ADDED", "ADDED"], f"apply {out}")
    st, out = api.control("POST", "/delete", {"resource": "pods", "namespace": "shop",
                                              "name": "debug"})
    check([e["type"] for e in out["events"]] == ["MODIFIED", "MODIFIED", "DELETED"], f"{out}")
    # Moving web-0 to node-b is a DELETED for a watch of node-a's pods.
    st, _, web = api.get("/api/v1/namespaces/shop/pods/web-0")
    web["spec"]["nodeName"] = "node-b"
    st, out = api.control("POST", "/apply", web)
    check([e["type"] for e in out["events"]] == ["MODIFIED"], f"move {out}")
    evs = w.wait(lambda e: len([x for x in e if x["type"] != "BOOKMARK"]) >= 4, "node-a watch")
    check(w.status == 200 and w.headers.get("transfer-encoding") == "chunked"
          and w.headers.get("content-type") == "application/json", f"watch headers {w.headers}")
    check(w.typed() == [("MODIFIED", "debug"), ("MODIFIED", "debug"), ("DELETED", "debug"),
                        ("DELETED", "web-0")], f"node-a watch events {w.typed()}")
    deleting, stopped = [e["object"] for e in evs if e["type"] == "MODIFIED"]
    check("deletionTimestamp" in deleting["metadata"], "graceful delete sets deletionTimestamp")
    check(deleting["status"]["phase"] == "Running" and stopped["status"]["phase"] == "Succeeded"
          and "terminated" in stopped["status"]["containerStatuses"][0]["state"],
          f"graceful delete: the containers stop, the phase turns terminal: {stopped['status']}")
    check(deleting["kind"] == "Pod" and deleting["apiVersion"] == "v1", "watch objects have kind")
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs if e["type"] != "BOOKMARK"]
    check(rvs == sorted(rvs) and rvs[0] > api.rv, f"increasing rvs {rvs}")
    check(w.wait_end(6) == "clean", "the watch ends cleanly at timeoutSeconds")
    marks = [e for e in w.events if e["type"] == "BOOKMARK"]
    check(len(marks) >= 2 and int(marks[-1]["object"]["metadata"]["resourceVersion"]) == rvs[-1],
          f"bookmarks {marks}")

    # The cluster-wide watch from the same rv: fraud's pod (node-b) too, and web-0 MODIFIED.
    w = Watch(api, f"/api/v1/pods?watch=1&timeoutSeconds=1&resourceVersion={api.rv}")
    check(w.wait_end(5) == "clean", "cluster watch ends")
    check(w.typed() == [("ADDED", "fraud-7b9c5d8f6-q2w3e"), ("MODIFIED", "debug"),
                        ("MODIFIED", "debug"), ("DELETED", "debug"), ("MODIFIED", "web-0")],
          f"cluster watch {w.typed()}")
    check(not [e for e in w.events if e["type"] == "BOOKMARK"], "no bookmarks unless allowed")

    # From "0": the current objects as ADDED first.
    w = Watch(api, f"/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion=0&{node_sel}")
    check(w.wait_end(5) == "clean", "rv=0 watch ends")
    check(sorted(w.typed()) == sorted([("ADDED", n) for n in
                                       ["api-7d9f8b6c5d-x2x9k", "fluent-bit-8hx2m",
                                        "report-29395680-q7x5z"]]), f"rv=0 {w.typed()}")

    # Too old: one ERROR event carrying a 410 Expired Status, in a 200 response.
    w = Watch(api, "/api/v1/pods?watch=true&resourceVersion=5")
    check(w.wait_end(5) == "clean" and w.status == 200, "410 watch ends")
    check(len(w.events) == 1 and w.events[0]["type"] == "ERROR"
          and w.events[0]["object"]["code"] == 410
          and w.events[0]["object"]["reason"] == "Expired", f"410: {w.events}")

    # Stop: an open watch is cut mid-stream, new connections are refused; start again: the
    # same port serves, and a watch from an rv before the stop resumes with what changed.
    st, state = api.control("GET", "/state")
    rv_before = int(state["resource_version"])
    w = Watch(api, f"/api/v1/pods?watch=true&timeoutSeconds=60&resourceVersion={rv_before}")
    deadline = time.monotonic() + 5
    while api.control("GET", "/state")[1]["watches"].get("pods", 0) < 1:
        check(time.monotonic() < deadline, "the watch is open")
        time.sleep(0.02)
    st, out = api.control("POST", "/stop")
    check(out == {"stopped": True}, f"stop {out}")
    check(w.wait_end(5) == "cut", f"stop cuts open watches: {w.ended}")
    try:
        socket.create_connection(("127.0.0.1", api.port), timeout=2).close()
        check(False, "connection refused while stopped")
    except ConnectionRefusedError:
        pass
    st, out = api.control("POST", "/delete", {"resource": "pods", "namespace": "payments",
                                              "name": "fraud-7b9c5d8f6-q2w3e",
                                              "graceful": False})
    check([e["type"] for e in out["events"]] == ["DELETED"], f"delete while stopped {out}")
    st, out = api.control("POST", "/start", {})
    check(out["started"] and out["port"] == api.port, f"start {out}")
    w = Watch(api, f"/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion={rv_before}")
    check(w.wait_end(5) == "clean" and w.typed() == [("DELETED", "fraud-7b9c5d8f6-q2w3e")],
          f"resume {w.typed()}")

    # Stop, start with compaction: the old rv is now 410.
    api.control("POST", "/stop")
    api.control("POST", "/start", {"compact": True})
    w = Watch(api, f"/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion={rv_before}")
    check(w.wait_end(5) == "clean" and w.events[0]["object"]["code"] == 410, f"{w.events}")
    # /compact alone closes open watches (cut) and makes their rv too old.
    st, lst = api.get("/api/v1/services")[0:3:2]
    w = Watch(api, f"/api/v1/services?watch=true&timeoutSeconds=30"
                   f"&resourceVersion={lst['metadata']['resourceVersion']}")
    deadline = time.monotonic() + 5
    while api.control("GET", "/state")[1]["watches"].get("services", 0) < 1:
        check(time.monotonic() < deadline, "the services watch is open")
        time.sleep(0.02)
    api.control("POST", "/apply", {**lst["items"][0], "kind": "Service", "apiVersion": "v1"})
    api.control("POST", "/compact")
    check(w.wait_end(5) == "cut", "compact cuts watches")

    # Injected failures: the next N matching requests.
    api.control("POST", "/fail", {"status": 503, "count": 2, "verbs": ["list"],
                                  "resources": ["pods"]})
    codes = [api.get("/api/v1/pods")[0] for _ in range(3)]
    check(codes == [503, 503, 200], f"injected {codes}")
    st, _, svc = api.get("/api/v1/services")
    check(st == 200, "other resources unaffected")

    # Writes are refused.
    c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    c.request("POST", "/api/v1/namespaces/shop/pods", body=b"{}")
    r = c.getresponse()
    check(r.status == 405 and json.loads(r.read())["code"] == 405, "POST is 405")
    c.close()

    # The request log.
    st, reqs = api.control("GET", "/requests?since=0")
    check(reqs[0]["verb"] == "list" and reqs[0]["query"]["fieldSelector"] == "spec.nodeName=node-a"
          and reqs[0]["query"]["limit"] == "500", f"request log {reqs[0]}")
    check(any(r["verb"] == "watch" and r["query"].get("allowWatchBookmarks") == "true"
              for r in reqs), "watch requests logged")
    done = api.close()
    check(done["event"] == "done" and done["requests"] == len(reqs) + 0, f"done {done}")
    mt_common.emit("done", checks=CHECKS)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"kube_api_check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
