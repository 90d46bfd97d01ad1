#!/usr/bin/env python3
"""A fake Kubernetes API server for the meshtap tests: LIST and WATCH (and GET of one object)
over plain HTTP/1.1, JSON only, from recorded fixture objects, behaving like a real
kube-apiserver where a client can tell.

usage: kube_api.py COMM --fixtures PATH [--fixtures PATH...] [--bind ADDR] [--port P]
                   [--control-port C] [--bookmark-seconds S] [--max-page N] [--start-stopped]

PATH is a JSON file or a directory of them (read in name order); each holds one object or a
`"kind": "List"` of objects as `kubectl get -o json` prints them. The objects' own
`metadata.resourceVersion`s are replaced: the server numbers every change from one counter, as
etcd does, so a list's resourceVersion and the watch events that follow it are consistent.

Prints `{"event":"listening","port":P,"control_port":C,"resource_version":RV}` once both ports
are bound (with --start-stopped the API port is only reserved: connections to it are refused
until the control interface starts it), then serves until stdin is closed or receives a line,
and prints `{"event":"done","requests":N}`.

The API (port P), as kube-apiserver answers it:
  GET /api/v1/{resource}, /api/v1/namespaces/{ns}/{resource}, /apis/{group}/{version}/...:
      a list `{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"RV"},
      "items":[...]}` (items without kind/apiVersion, as the real server sends them), ordered by
      namespace/name. `limit` and `continue` page it (a continue token older than the last
      compaction is 410 Gone). `fieldSelector` (metadata.name, metadata.namespace,
      spec.nodeName, status.phase, status.podIP; =, ==, !=, comma = and) and `labelSelector`
      (k=v, k!=v, k, !k, k in (a,b), k notin (a,b)) filter it.
  ...?watch=true|1 [&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T]: a chunked
      `application/json` stream of `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR",
      "object":{...}}` lines, one event per chunk: every change after RV (with RV absent or
      "0": a synthetic ADDED per current object first), then changes as they happen, for T
      seconds (default 1800), then the response ends. RV older than the last compaction: one
      ERROR event with a 410 Expired Status, then the end of the response (HTTP 200, as the
      watch cache answers). Changes that move an object into or out of a selector are ADDED or
      DELETED for that watch. BOOKMARKs (when allowed) every --bookmark-seconds.
  GET /api/v1/namespaces/{ns}/{resource}/{name} (and the cluster-scoped and /apis forms): one
      object, or a 404 NotFound Status.
  /version, /api, /apis, /healthz, /readyz, /livez: what a client may ask first.
  Anything else: 404 NotFound Status; a method other than GET: 405 MethodNotAllowed Status.

The control interface (port C, JSON bodies and answers):
  GET  /state                  serving, resource_version, compacted_below, objects per
                               resource, open watches per resource, requests served
  GET  /requests?since=I       the API requests received from index I on: {"i", "method",
                               "path", "query", "resource", "verb" (list|watch|get|other),
                               "status", "t"}
  POST /apply                  an object or a List: each is ADDED (new namespace/name) or
                               MODIFIED; an object with the same name and another uid replaces
                               the old one (DELETED, then ADDED). Answers the events.
  POST /delete                 {"resource", "namespace", "name", "graceful": bool}: graceful
                               (default) is what kubelet and the API do: MODIFIED with
                               deletionTimestamp, MODIFIED with the containers terminated and
                               phase Succeeded, then DELETED; otherwise DELETED alone.
  POST /stop                   close the API listener and every API connection (watches end
                               mid-stream): connections are refused until /start.
  POST /start                  {"compact": bool}: listen again on the same port; with
                               compact, every resourceVersion so far becomes too old.
  POST /compact                every resourceVersion so far becomes too old and every open
                               watch is closed (clients re-watch, get 410, relist).
  POST /fail                   {"status": 503, "count": N, "verbs": [...], "resources": [...]}:
                               the next N matching API requests fail with that status.
"""

import mt_common

COMM = mt_common.set_comm_from_argv()

import argparse  # noqa: E402
import base64  # noqa: E402
import copy  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
import uuid  # noqa: E402

# resource -> (group, version, kind, namespaced)
RESOURCES = {
    "pods": ("", "v1", "Pod", True),
    "services": ("", "v1", "Service", True),
    "endpoints": ("", "v1", "Endpoints", True),
    "namespaces": ("", "v1", "Namespace", False),
    "nodes": ("", "v1", "Node", False),
    "endpointslices": ("discovery.k8s.io", "v1", "EndpointSlice", True),
    "replicasets": ("apps", "v1", "ReplicaSet", True),
    "deployments": ("apps", "v1", "Deployment", True),
    "statefulsets": ("apps", "v1", "StatefulSet", True),
    "daemonsets": ("apps", "v1", "DaemonSet", True),
    "jobs": ("batch", "v1", "Job", True),
    "cronjobs": ("batch", "v1", "CronJob", True),
}
KIND_TO_RESOURCE = {kind: res for res, (_, _, kind, _) in RESOURCES.items()}

FIRST_RESOURCE_VERSION = 48213
DEFAULT_WATCH_TIMEOUT = 1800


def api_version(resource):
    group, version, _, _ = RESOURCES[resource]
    return f"{group}/{version}" if group else version


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status(code, reason, message, details=None):
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def key_of(obj):
    md = obj.get("metadata", {})
    return (md.get("namespace", ""), md["name"])


# ---------------------------------------------------------------------------------------------
# Selectors


def field_value(obj, path):
    v = obj
    for part in path.split("."):
        if not isinstance(v, dict):
            return ""
        v = v.get(part)
    return "" if v is None else str(v)


def parse_field_selector(text):
    """[(path, op, value)], op '=' or '!='; raises ValueError on a selector the real API
    rejects."""
    reqs = []
    if not text:
        return reqs
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            path, value = part.split("!=", 1)
            op = "!="
        elif "==" in part:
            path, value = part.split("==", 1)
            op = "="
        elif "=" in part:
            path, value = part.split("=", 1)
            op = "="
        else:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{part}'")
        reqs.append((path.strip(), op, value.strip()))
    return reqs


SUPPORTED_FIELDS = {
    "pods": {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase",
             "status.podIP", "spec.restartPolicy", "spec.schedulerName",
             "spec.serviceAccountName", "spec.hostNetwork", "status.nominatedNodeName"},
}


def check_field_selector(resource, reqs):
    """Raises ValueError, as the real API answers 400, for a field it cannot select on."""
    allowed = SUPPORTED_FIELDS.get(resource, {"metadata.name", "metadata.namespace"})
    for path, _, _ in reqs:
        if path not in allowed:
            raise ValueError(f'field label not supported: {path}')


def parse_label_selector(text):
    """[(key, op, values)], op in =, !=, in, notin, exists, !exists."""
    reqs = []
    if not text:
        return reqs
    parts = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in parts:
        part = part.strip()
        if not part:
            continue
        words = part.split()
        if len(words) >= 3 and words[1] in ("in", "notin"):
            values = " ".join(words[2:]).strip("()").split(",")
            reqs.append((words[0], words[1], {v.strip() for v in values}))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append((k.strip(), "!=", {v.strip()}))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append((k.strip(), "=", {v.strip()}))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append((k.strip(), "=", {v.strip()}))
        elif part.startswith("!"):
            reqs.append((part[1:].strip(), "!exists", set()))
        else:
            reqs.append((part, "exists", set()))
    return reqs


def matches(obj, fields, labels):
    if obj is None:
        return False
    for path, op, value in fields:
        have = field_value(obj, path)
        if (have == value) != (op == "="):
            return False
    obj_labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, values in labels:
        present = key in obj_labels
        v = obj_labels.get(key)
        ok = {
            "=": present and v in values,
            "in": present and v in values,
            "!=": not present or v not in values,
            "notin": not present or v not in values,
            "exists": present,
            "!exists": not present,
        }[op]
        if not ok:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# The store: objects, the change history, the resourceVersion counter


class Store:
    def __init__(self):
        self.cond = threading.Condition()
        self.rv = FIRST_RESOURCE_VERSION
        # Watches from below this resourceVersion are too old (410).
        self.compacted_below = FIRST_RESOURCE_VERSION
        # resource -> {(ns, name): obj}
        self.objects = {res: {} for res in RESOURCES}
        # [(rv, resource, type, old, new)]
        self.history = []
        # Bumped on /stop and /compact: watches of an older epoch end.
        self.epoch = 0

    def _next_rv(self):
        self.rv += 1
        return self.rv

    def load(self, objs):
        """Fixture objects: stored as they are, numbered, no history (as if the watch cache
        started after they were created)."""
        with self.cond:
            for obj in objs:
                res = self._resource_of(obj)
                obj = copy.deepcopy(obj)
                obj.setdefault("metadata", {})["resourceVersion"] = str(self._next_rv())
                self.objects[res][key_of(obj)] = obj
            self.compacted_below = self.rv
            self.cond.notify_all()

    @staticmethod
    def _resource_of(obj):
        kind = obj.get("kind")
        if kind not in KIND_TO_RESOURCE:
            raise SystemExit(f"fixture object of unknown kind {kind!r}: {json.dumps(obj)[:200]}")
        res = KIND_TO_RESOURCE[kind]
        want = api_version(res)
        if obj.get("apiVersion") != want:
            raise SystemExit(f"{kind} with apiVersion {obj.get('apiVersion')!r}, want {want!r}")
        if RESOURCES[res][3] and not obj.get("metadata", {}).get("namespace"):
            raise SystemExit(f"{kind} {obj.get('metadata', {}).get('name')} has no namespace")
        return res

    def _record(self, res, typ, old, new):
        rv = self._next_rv()
        obj = copy.deepcopy(new)
        obj["metadata"]["resourceVersion"] = str(rv)
        if typ == "DELETED":
            self.objects[res].pop(key_of(obj), None)
        else:
            self.objects[res][key_of(obj)] = obj
        self.history.append((rv, res, typ, old, obj))
        return {"type": typ, "resourceVersion": str(rv), "resource": res,
                "namespace": key_of(obj)[0], "name": key_of(obj)[1]}

    def apply(self, obj):
        with self.cond:
            res = self._resource_of(obj)
            obj = copy.deepcopy(obj)
            md = obj["metadata"]
            md.setdefault("uid", str(uuid.uuid4()))
            md.setdefault("creationTimestamp", now_rfc3339())
            events = []
            old = self.objects[res].get(key_of(obj))
            if old is not None and old["metadata"].get("uid") != md["uid"]:
                events.append(self._record(res, "DELETED", old, old))
                old = None
            if old is None:
                events.append(self._record(res, "ADDED", None, obj))
            else:
                md.setdefault("generation", old["metadata"].get("generation", 1))
                events.append(self._record(res, "MODIFIED", old, obj))
            self.cond.notify_all()
            return events

    def delete(self, res, namespace, name, graceful):
        with self.cond:
            old = self.objects[res].get((namespace or "", name))
            if old is None:
                return None
            events = []
            if graceful and res == "pods":
                terminating = copy.deepcopy(old)
                md = terminating["metadata"]
                md["deletionTimestamp"] = now_rfc3339()
                md["deletionGracePeriodSeconds"] = 30
                events.append(self._record(res, "MODIFIED", old, terminating))
                old = self.objects[res][key_of(terminating)]
                stopped = copy.deepcopy(old)
                st = stopped.setdefault("status", {})
                for cs in st.get("containerStatuses", []):
                    started = cs.get("state", {}).get("running", {}).get("startedAt")
                    cs["state"] = {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": started,
                            "finishedAt": now_rfc3339(),
                            "containerID": cs.get("containerID"),
                        }
                    }
                    cs["ready"] = False
                    cs["started"] = False
                for cond in st.get("conditions", []):
                    if cond.get("type") in ("Ready", "ContainersReady"):
                        cond["status"] = "False"
                # kubelet moves a pod being deleted to a terminal phase once its containers
                # have stopped (they exited 0 here), before the API removes it.
                st["phase"] = "Succeeded"
                events.append(self._record(res, "MODIFIED", old, stopped))
                old = self.objects[res][key_of(stopped)]
            events.append(self._record(res, "DELETED", old, old))
            self.cond.notify_all()
            return events

    def compact(self):
        with self.cond:
            self.compacted_below = self.rv
            self.history = []
            self.epoch += 1
            self.cond.notify_all()

    def list(self, res, namespace, fields, labels):
        items = [
            o
            for (ns, _), o in sorted(self.objects[res].items())
            if (namespace is None or ns == namespace) and matches(o, fields, labels)
        ]
        return items

    def events_since(self, res, namespace, fields, labels, since):
        """Watch events of `res` after resourceVersion `since`, as (rv, type, obj) with types
        adjusted for the selector."""
        out = []
        for rv, r, typ, old, new in self.history:
            if rv <= since or r != res:
                continue
            if namespace is not None and key_of(new)[0] != namespace:
                continue
            was = matches(old, fields, labels) if old is not None else False
            now = matches(new, fields, labels)
            if typ == "DELETED":
                if was or now:
                    out.append((rv, "DELETED", new))
            elif typ == "ADDED":
                if now:
                    out.append((rv, "ADDED", new))
            else:
                if was and now:
                    out.append((rv, "MODIFIED", new))
                elif now:
                    out.append((rv, "ADDED", new))
                elif was:
                    out.append((rv, "DELETED", new))
        return out


STORE = Store()


# ---------------------------------------------------------------------------------------------
# Requests: the log, injected failures


class Log:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.failures = []  # [{"status", "count", "verbs", "resources"}]

    def add(self, record):
        with self.lock:
            record["i"] = len(self.requests)
            self.requests.append(record)
            return record

    def since(self, i):
        with self.lock:
            return list(self.requests[i:])

    def injected(self, verb, resource):
        with self.lock:
            for f in self.failures:
                if f["count"] <= 0:
                    continue
                if f.get("verbs") and verb not in f["verbs"]:
                    continue
                if f.get("resources") and resource not in f["resources"]:
                    continue
                f["count"] -= 1
                return f["status"]
            return None


LOG = Log()


# ---------------------------------------------------------------------------------------------
# The API server


def parse_path(path):
    """(resource, namespace or None, name or None) or None for a path that names no
    resource collection."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
        version = parts[2]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 2:
        return None
    res = rest[0]
    if res not in RESOURCES:
        return None
    g, v, _, namespaced = RESOURCES[res]
    if g != group or (group and v != version):
        return None
    if namespace is not None and not namespaced:
        return None
    name = rest[1] if len(rest) == 2 else None
    return res, namespace, name


VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.4",
    "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
    "gitTreeState": "clean",
    "buildDate": "2024-12-10T18:36:12Z",
    "goVersion": "go1.22.9",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.server.track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def send_response(self, code, message=None):
        # kube-apiserver sends no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def send_json(self, code, body, record=None):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", "b3c6e5e1-6f0b-4f5e-9d3e-3b9b2d4d7c10")
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid",
                         "1ac4ae2c-8b67-4b5a-9a8e-1b8a6c3f0d22")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if record is not None:
            record["status"] = code

    def serving(self):
        return self.server.app.serving and self.server.epoch == self.server.app.epoch

    def do_GET(self):
        if not self.serving():
            self.close_connection = True
            return
        url = urllib.parse.urlsplit(self.path)
        parsed_query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        query = {k: v[-1] for k, v in parsed_query.items()}
        parsed = parse_path(url.path)
        verb = "other"
        if parsed is not None:
            res, ns, name = parsed
            verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
        record = LOG.add({
            "method": "GET",
            "path": url.path,
            "query": query,
            "resource": parsed[0] if parsed else None,
            "verb": verb,
            "status": None,
            "t": time.time(),
        })
        try:
            self.route(url.path, query, parsed, verb, record)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def do_other(self):
        record = LOG.add({"method": self.command, "path": self.path, "query": {},
                          "resource": None, "verb": "other", "status": None, "t": time.time()})
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        message = "the server does not allow this method on the requested resource"
        self.send_json(405, status(405, "MethodNotAllowed", message), record)

    do_POST = do_other
    do_PUT = do_other
    do_PATCH = do_other
    do_DELETE = do_other

    def route(self, path, query, parsed, verb, record):
        if parsed is None:
            if path in ("/healthz", "/readyz", "/livez"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                record["status"] = 200
                return
            if path == "/version":
                self.send_json(200, VERSION, record)
                return
            if path == "/api":
                self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                     "serverAddressByClientCIDRs": [
                                         {"clientCIDR": "0.0.0.0/0",
                                          "serverAddress": "172.18.0.2:6443"}]}, record)
                return
            if path == "/apis":
                groups = sorted({g for g, _, _, _ in RESOURCES.values() if g})
                self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                    {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                     "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                    for g in groups]}, record)
                return
            self.send_json(404, status(404, "NotFound",
                                       "the server could not find the requested resource",
                                       {}), record)
            return
        res, ns, name = parsed
        injected = LOG.injected(verb, res)
        if injected is not None:
            reasons = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests",
                       403: "Forbidden", 401: "Unauthorized", 504: "Timeout"}
            self.send_json(injected, status(injected, reasons.get(injected, "InternalError"),
                                            f"injected failure {injected}"), record)
            return
        try:
            fields = parse_field_selector(query.get("fieldSelector", ""))
            check_field_selector(res, fields)
            labels = parse_label_selector(query.get("labelSelector", ""))
        except ValueError as e:
            self.send_json(400, status(400, "BadRequest", str(e)), record)
            return
        if verb == "get":
            with STORE.cond:
                obj = STORE.objects[res].get((ns or "", name))
                obj = copy.deepcopy(obj)
            if obj is None:
                group = RESOURCES[res][0]
                what = f"{res}.{group}" if group else res
                self.send_json(404, status(404, "NotFound", f'{what} "{name}" not found',
                                           {"name": name, "group": group, "kind": res}), record)
                return
            self.send_json(200, obj, record)
            return
        if verb == "watch":
            self.watch(res, ns, fields, labels, query, record)
            return
        self.list(res, ns, fields, labels, query, record)

    def list(self, res, ns, fields, labels, query, record):
        _, _, kind, _ = RESOURCES[res]
        limit = int(query.get("limit") or 0)
        if self.server.app.max_page:
            limit = min(limit, self.server.app.max_page) if limit else self.server.app.max_page
        start_after = None
        with STORE.cond:
            list_rv = STORE.rv
            token = query.get("continue")
            if token:
                try:
                    decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                    list_rv = int(decoded["rv"])
                    start_after = tuple(decoded["start"])
                except (ValueError, KeyError, TypeError):
                    self.send_json(400, status(400, "BadRequest",
                                               "continue key is not valid"), record)
                    return
                if list_rv < STORE.compacted_below:
                    self.send_json(410, status(
                        410, "Expired",
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter, "
                        "or use the continue token in this response to retrieve the remainder "
                        "of the results. Continuing with the provided token results in an "
                        "inconsistent list - objects that were created, modified, or deleted "
                        "between the time the first chunk was returned and now may show up in "
                        "the list."), record)
                    return
            items = STORE.list(res, ns, fields, labels)
            items = copy.deepcopy(items)
        if start_after is not None:
            items = [o for o in items if key_of(o) > start_after]
        meta = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            rest = len(items) - limit
            items = items[:limit]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"rv": list_rv, "start": list(key_of(items[-1]))}).encode()).decode()
            meta["remainingItemCount"] = rest
        for o in items:
            o.pop("kind", None)
            o.pop("apiVersion", None)
        self.send_json(200, {"kind": f"{kind}List", "apiVersion": api_version(res),
                             "metadata": meta, "items": items}, record)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def event(self, typ, obj):
        self.chunk(json.dumps({"type": typ, "object": obj}, separators=(",", ":")).encode()
                   + b"\n")

    def watch(self, res, ns, fields, labels, query, record):
        _, _, kind, _ = RESOURCES[res]
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_WATCH_TIMEOUT
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        rv_text = query.get("resourceVersion", "")
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        record["status"] = 200
        app = self.server.app
        my_epoch = self.server.epoch
        store_epoch = STORE.epoch
        self.server.app.watch_open(res, +1)
        try:
            with STORE.cond:
                initial = []
                if rv_text in ("", "0"):
                    since = STORE.rv
                    initial = copy.deepcopy(STORE.list(res, ns, fields, labels))
                else:
                    try:
                        since = int(rv_text)
                    except ValueError:
                        since = -1
                    if since < STORE.compacted_below:
                        gone = status(
                            410, "Expired",
                            f"too old resource version: {rv_text} ({STORE.compacted_below})")
                        initial = None
            if initial is None:
                self.event("ERROR", gone)
                self.chunk(b"")
                return
            for o in initial:
                o.setdefault("kind", kind)
                o.setdefault("apiVersion", api_version(res))
                self.event("ADDED", o)
            last_bookmark = time.monotonic()
            while True:
                with STORE.cond:
                    pending = STORE.events_since(res, ns, fields, labels, since)
                    if not pending:
                        left = deadline - time.monotonic()
                        wait = left
                        if bookmarks:
                            next_mark = last_bookmark + app.bookmark_seconds
                            wait = min(wait, next_mark - time.monotonic())
                        if wait > 0:
                            STORE.cond.wait(wait)
                        pending = STORE.events_since(res, ns, fields, labels, since)
                    current = STORE.rv
                    ended = (my_epoch != app.epoch or not app.serving
                             or store_epoch != STORE.epoch)
                    pending = copy.deepcopy(pending)
                if ended:
                    # The server went away (or the watch cache was reset): no clean end.
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                for rv, typ, obj in pending:
                    self.event(typ, obj)
                    since = rv
                now = time.monotonic()
                if now >= deadline:
                    self.chunk(b"")
                    return
                if bookmarks and now - last_bookmark >= app.bookmark_seconds:
                    # Every change so far has been sent: the bookmark may carry the latest rv.
                    since = max(since, current)
                    bm = {"kind": kind, "apiVersion": api_version(res),
                          "metadata": {"resourceVersion": str(since), "creationTimestamp": None}}
                    if res == "pods":
                        bm["spec"] = {"containers": None}
                        bm["status"] = {}
                    self.event("BOOKMARK", bm)
                    last_bookmark = now
        finally:
            self.server.app.watch_open(res, -1)


class ApiServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, app, epoch):
        self.app = app
        self.epoch = epoch
        self.conns = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, ApiHandler)

    def track(self, conn, add):
        with self.conns_lock:
            if add:
                self.conns.add(conn)
            else:
                self.conns.discard(conn)

    def drop_all(self):
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class App:
    def __init__(self, bind, port, bookmark_seconds, max_page):
        self.bind = bind
        self.port = port
        self.bookmark_seconds = bookmark_seconds
        self.max_page = max_page
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self.serving = False
        self.epoch = 0
        self.watches = {}

    def watch_open(self, res, delta):
        with self.lock:
            self.watches[res] = self.watches.get(res, 0) + delta

    def start(self):
        with self.lock:
            if self.serving:
                return False
            self.epoch += 1
            deadline = time.monotonic() + 10
            while True:
                try:
                    server = ApiServer((self.bind, self.port), self, self.epoch)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.port = server.server_address[1]
            self.server = server
            self.serving = True
            self.thread = threading.Thread(target=server.serve_forever,
                                           kwargs={"poll_interval": 0.05}, daemon=True)
            self.thread.start()
            return True

    def stop(self):
        with self.lock:
            if not self.serving:
                return False
            self.serving = False
            self.epoch += 1
            server = self.server
            self.server = None
        server.shutdown()
        server.server_close()
        server.drop_all()
        with STORE.cond:
            STORE.cond.notify_all()
        return True


# ---------------------------------------------------------------------------------------------
# The control interface


class ControlHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    app = None

    def log_message(self, *args):
        pass

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        return json.loads(self.rfile.read(length))

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        app = ControlHandler.app
        if url.path == "/state":
            with STORE.cond:
                objects = {r: len(o) for r, o in STORE.objects.items() if o}
                rv = STORE.rv
                compacted = STORE.compacted_below
            with app.lock:
                watches = {r: n for r, n in app.watches.items() if n}
                serving = app.serving
            self.answer(200, {"serving": serving, "port": app.port,
                              "resource_version": str(rv), "compacted_below": str(compacted),
                              "objects": objects, "watches": watches,
                              "requests": len(LOG.since(0))})
        elif url.path == "/requests":
            since = int(query.get("since", ["0"])[0])
            self.answer(200, LOG.since(since))
        else:
            self.answer(404, {"error": f"no {url.path}"})

    def do_POST(self):
        app = ControlHandler.app
        try:
            body = self.body()
        except ValueError as e:
            self.answer(400, {"error": f"bad JSON: {e}"})
            return
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/apply":
                objs = body["items"] if body.get("kind") == "List" else [body]
                events = []
                for o in objs:
                    events.extend(STORE.apply(o))
                self.answer(200, {"events": events})
            elif path == "/delete":
                res = body.get("resource", "pods")
                if res not in RESOURCES:
                    self.answer(400, {"error": f"unknown resource {res}"})
                    return
                events = STORE.delete(res, body.get("namespace", ""), body["name"],
                                      body.get("graceful", True))
                if events is None:
                    self.answer(404, {"error": f"no {res} {body.get('namespace')}/{body['name']}"})
                else:
                    self.answer(200, {"events": events})
            elif path == "/stop":
                self.answer(200, {"stopped": app.stop()})
            elif path == "/start":
                if body.get("compact"):
                    STORE.compact()
                self.answer(200, {"started": app.start(), "port": app.port})
            elif path == "/compact":
                STORE.compact()
                self.answer(200, {"compacted_below": str(STORE.compacted_below)})
            elif path == "/fail":
                with LOG.lock:
                    LOG.failures.append({"status": int(body.get("status", 503)),
                                         "count": int(body.get("count", 1)),
                                         "verbs": body.get("verbs") or [],
                                         "resources": body.get("resources") or []})
                self.answer(200, {"ok": True})
            else:
                self.answer(404, {"error": f"no {path}"})
        except (KeyError, SystemExit) as e:
            self.answer(400, {"error": str(e)})


# ---------------------------------------------------------------------------------------------


def read_fixtures(paths):
    objs = []
    for p in paths:
        files = [p]
        if os.path.isdir(p):
            files = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".json"))
        for f in files:
            with open(f) as fh:
                doc = json.load(fh)
            objs.extend(doc["items"] if doc.get("kind") == "List" else [doc])
    return objs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comm")
    p.add_argument("--fixtures", action="append", default=[])
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--bookmark-seconds", type=float, default=5.0)
    p.add_argument("--max-page", type=int, default=0)
    p.add_argument("--start-stopped", action="store_true")
    a = p.parse_args()

    STORE.load(read_fixtures(a.fixtures))
    port = a.port
    if port == 0:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a.bind, 0))
        port = s.getsockname()[1]
        s.close()
    app = App(a.bind, port, a.bookmark_seconds, a.max_page)
    if not a.start_stopped:
        app.start()
    ControlHandler.app = app
    control = http.server.ThreadingHTTPServer(("127.0.0.1", a.control_port), ControlHandler)
    control.daemon_threads = True
    threading.Thread(target=control.serve_forever, daemon=True).start()
    mt_common.emit("listening", port=app.port, control_port=control.server_address[1],
                   resource_version=str(STORE.rv))
    sys.stdin.readline()
    app.stop()
    control.shutdown()
    mt_common.emit("done", requests=len(LOG.since(0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
