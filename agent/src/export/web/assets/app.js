// meshtap's built-in page: plain JavaScript and SVG, no library, every request to this agent.
// Data: /api/v1/{graph,services,operations,health} and the Zipkin API (/api/v2) of the store.
"use strict";

const REFRESH_MS = 5000;
const state = { tab: "map", window: 5, service: null, edge: null, trace: null, timer: null };

function el(tag, attrs, ...children) {
  const svg = ["svg", "g", "path", "rect", "text", "title", "marker", "defs"].includes(tag);
  const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    // Through the CSSOM: the page's policy refuses inline style attributes.
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

// The agent's bearer token (--token-file), asked for when the API answers 401 and kept for this
// tab only; sent with every API request.
const TOKEN_KEY = "meshtap.token";

function askForToken(wrong) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-hint").textContent = wrong ? "wrong token, again:" : "token:";
  form.elements.token.focus();
}

async function getJson(url) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(url, { headers });
  if (r.status === 401) {
    askForToken(Boolean(token));
    throw new Error("the agent requires its token");
  }
  if (!r.ok) throw new Error(url + ": " + r.status + " " + (await r.text()).trim());
  return r.json();
}

function fmtRate(r) { return r >= 100 ? r.toFixed(0) : r >= 1 ? r.toFixed(1) : r.toFixed(2); }
function fmtPct(x) { return (100 * x).toFixed(x > 0 && x < 0.01 ? 2 : 1) + "%"; }
function fmtSec(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}
function fmtMicros(us) { return fmtSec(us / 1e6); }

function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = error ? "err" : "";
}

// ------------------------------------------------------------------------------------------
// Service map: services in columns by their depth from the callers, edges as curves.

const COL = 520, ROW = 84, NODE_W = 220, NODE_H = 46, PAD = 30;

function layout(nodes, edges) {
  const level = new Map(nodes.map((n) => [n.name, 0]));
  // Longest path from a caller, bounded by the node count (cycles stop growing there).
  for (let i = 0; i < nodes.length; i++) {
    let changed = false;
    for (const e of edges) {
      if (e.client === e.server) continue;
      const want = level.get(e.client) + 1;
      if (want > level.get(e.server) && want < nodes.length) { level.set(e.server, want); changed = true; }
    }
    if (!changed) break;
  }
  const columns = new Map();
  for (const n of nodes) {
    const l = level.get(n.name);
    if (!columns.has(l)) columns.set(l, []);
    columns.get(l).push(n.name);
  }
  const pos = new Map();
  let width = 0, height = 0;
  for (const [l, names] of [...columns.entries()].sort((a, b) => a[0] - b[0])) {
    names.sort();
    names.forEach((name, i) => {
      const x = PAD + l * COL, y = PAD + i * ROW;
      pos.set(name, { x, y });
      width = Math.max(width, x + NODE_W + PAD);
      height = Math.max(height, y + NODE_H + PAD);
    });
  }
  return { pos, width: width + 60, height: height + 20 };
}

function nodeStat(n) {
  const s = n.server;
  if (!s) return n.client ? "calls " + fmtRate(n.client.rate) + "/s" : "";
  return fmtRate(s.rate) + "/s · " + fmtPct(s.error_ratio) + " err · p99 " + fmtSec(s.p99_seconds);
}

function edgeLines(e) {
  return [e.requests + " req · " + fmtRate(e.rate) + "/s · " + fmtPct(e.error_ratio) + " err",
    "p50 " + fmtSec(e.p50_seconds) + " · p99 " + fmtSec(e.p99_seconds)];
}

function edgeLabel(e) { return edgeLines(e).join(" · "); }

async function loadMap() {
  const g = await getJson("api/v1/graph?window=" + state.window);
  const summary = document.getElementById("map-summary");
  clear(summary).append(el("p", { class: "muted" },
    g.nodes.length + " services, " + g.edges.length + " edges with requests and " + g.tcp_edges.length + " TCP-only edges over the last " +
    Math.round(g.seconds) + " s" + (g.truncated ? " (the busiest edges only)" : "")));
  const canvas = clear(document.getElementById("map-canvas"));
  if (g.nodes.length === 0) {
    canvas.append(el("p", { class: "muted", style: "padding:1em" }, "No requests between services in this window yet."));
    return;
  }
  // A peer outside this node that has no other name is named by its address: drawn grey.
  const external = new Set(g.nodes.map((n) => n.name).filter((n) => /^[0-9.]+$|:/.test(n)));
  const { pos, width, height } = layout(g.nodes, g.edges.concat(g.tcp_edges));
  const svg = el("svg", { width, height, viewBox: "0 0 " + width + " " + height, id: "map-svg" });
  const edgeLayer = el("g", { class: "edges" }), nodeLayer = el("g", { class: "nodes" });
  svg.append(edgeLayer, nodeLayer);
  const geometry = (a, b, self) => {
    if (self) {
      const x = a.x + NODE_W, y = a.y + NODE_H / 2;
      return { d: `M${x} ${y - 8} C${x + 60} ${y - 40}, ${x + 60} ${y + 40}, ${x} ${y + 8}`, lx: x + 70, ly: y - 30 };
    }
    if (b.x > a.x) {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      // The label on the curve at t = 0.7: edges that cross in the middle have theirs apart.
      return { d: `M${x1} ${y1} C${(x1 + x2) / 2} ${y1}, ${(x1 + x2) / 2} ${y2}, ${x2} ${y2}`,
        lx: 0.342 * x1 + 0.658 * x2, ly: 0.216 * y1 + 0.784 * y2 - 22 };
    }
    // Back or sideways edge: a curve below both nodes.
    const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2, y2 = b.y + NODE_H;
    const low = Math.max(y1, y2) + 36;
    return { d: `M${x1} ${y1} C${x1} ${low}, ${x2} ${low}, ${x2} ${y2}`, lx: (x1 + x2) / 2, ly: low - 4 };
  };
  const labelled = (lines, lx, ly) => [
    el("rect", { class: "bg", x: lx - 95, y: ly - 12, width: 190, height: lines.length * 14 + 2 }),
    lines.map((line, k) => el("text", { x: lx, y: ly + 14 * k, class: "edge-label", "text-anchor": "middle" }, line))];
  g.edges.forEach((e, i) => {
    const label = edgeLabel(e), lines = edgeLines(e);
    const { d, lx, ly } = geometry(pos.get(e.client), pos.get(e.server), e.client === e.server);
    const cls = "edge" + (e.connection_type === "virtual_node" ? " virtual" : "") +
      (e.failed > 0 ? " failing" : "") + (state.edge && state.edge.client === e.client && state.edge.server === e.server ? " selected" : "");
    edgeLayer.append(el("g", {
      class: cls, "data-client": e.client, "data-server": e.server, "data-requests": e.requests,
      "data-failed": e.failed, id: "edge-" + i, onclick: () => selectEdge(e),
    },
    el("title", {}, e.client + " → " + e.server + ": " + label),
    el("path", { d, "marker-end": "url(#arrow)" }),
    labelled(lines, lx, ly)));
  });
  g.tcp_edges.forEach((e) => {
    const { d, lx, ly } = geometry(pos.get(e.client), pos.get(e.server), e.client === e.server);
    const line = e.connections + " conn · :" + e.server_port + (e.failed ? " · " + e.failed + " failed" : "") +
      " · connect p99 " + fmtSec(e.connect_p99_seconds);
    edgeLayer.append(el("g", { class: "tcp-edge" + (e.failed > 0 ? " failing" : ""), "data-client": e.client, "data-server": e.server,
      "data-port": e.server_port, "data-connections": e.connections },
    el("title", {}, "TCP only (no parsed protocol) " + e.client + " → " + e.server + ":" + e.server_port + ": " + line),
    el("path", { d }), labelled([line], lx, ly)));
  });
  svg.prepend(el("defs", {}, el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    el("path", { d: "M0 0 L10 5 L0 10 z", fill: "#3b82c4" }))));
  for (const n of g.nodes) {
    const p = pos.get(n.name);
    nodeLayer.append(el("g", { class: "node" + (external.has(n.name) ? " external" : ""), "data-service": n.name,
      transform: `translate(${p.x},${p.y})`, onclick: () => { state.service = n.name; go("services"); } },
      el("title", {}, n.name),
      el("rect", { width: NODE_W, height: NODE_H }),
      el("text", { x: 10, y: 19, class: "name" }, n.name.length > 30 ? n.name.slice(0, 29) + "…" : n.name),
      el("text", { x: 10, y: 36, class: "stat" }, nodeStat(n))));
  }
  canvas.append(svg);
  if (state.edge) renderEdgeDetail(g.edges.find((e) => e.client === state.edge.client && e.server === state.edge.server));
}

function selectEdge(e) {
  state.edge = { client: e.client, server: e.server };
  document.querySelectorAll(".edge.selected").forEach((x) => x.classList.remove("selected"));
  document.querySelectorAll(".edge").forEach((x) => {
    if (x.dataset.client === e.client && x.dataset.server === e.server) x.classList.add("selected");
  });
  renderEdgeDetail(e);
}

function renderEdgeDetail(e) {
  const box = clear(document.getElementById("edge-detail"));
  if (!e) return;
  const traces = (order, errors) => (ev) => {
    ev.preventDefault();
    setFilter({ service: e.server, remote: e.client, errors, order, min: "" });
    go("traces");
  };
  box.append(el("h2", {}, e.client + " → " + e.server),
    el("p", {}, edgeLabel(e) + (e.connection_type === "virtual_node" ? " (one end outside this node)" : "")),
    el("p", {}, el("a", { href: "#traces", id: "edge-slowest", onclick: traces("slowest", false) }, "slowest traces"), " · ",
      el("a", { href: "#traces", id: "edge-failed", onclick: traces("recent", true) }, "failed traces")));
}

// ------------------------------------------------------------------------------------------
// Services: RED per service, then per protocol, side and operation of one service.

function redCells(r) {
  if (!r) return [el("td", { class: "num muted" }, "–"), el("td", { class: "num muted" }, ""), el("td", { class: "num muted" }, ""), el("td", { class: "num muted" }, ""), el("td", { class: "num muted" }, "")];
  return [el("td", { class: "num" }, r.requests), el("td", { class: "num" }, fmtRate(r.rate) + "/s"),
    el("td", { class: "num" + (r.failed > 0 ? " err" : "") }, fmtPct(r.error_ratio)),
    el("td", { class: "num" }, fmtSec(r.p50_seconds)), el("td", { class: "num" }, fmtSec(r.p99_seconds))];
}

const RED_HEAD = ["requests", "rate", "errors", "p50", "p99"];

async function loadServices() {
  const s = await getJson("api/v1/services?window=" + state.window);
  const table = clear(document.getElementById("service-table"));
  table.append(el("thead", {},
    el("tr", {}, el("th", { rowspan: 2 }, "service"), el("th", { rowspan: 2 }, "protocols"),
      el("th", { colspan: 5 }, "served"), el("th", { colspan: 5 }, "called")),
    el("tr", {}, RED_HEAD.map((h) => el("th", {}, h)), RED_HEAD.map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const row of s.services) {
    body.append(el("tr", { class: "clickable" + (row.name === state.service ? " selected" : ""), "data-service": row.name,
      onclick: () => { state.service = row.name; loadServices().catch(showError); } },
      el("td", {}, row.name), el("td", {}, row.protocols.join(", ")), redCells(row.server), redCells(row.client)));
  }
  if (s.services.length === 0) body.append(el("tr", {}, el("td", { colspan: 12, class: "muted" }, "No requests in this window yet.")));
  table.append(body);
  await loadOperations();
}

async function loadOperations() {
  const title = clear(document.getElementById("operations-title"));
  const table = clear(document.getElementById("operation-table"));
  if (!state.service) return;
  const o = await getJson("api/v1/operations?window=" + state.window + "&service=" + encodeURIComponent(state.service));
  title.append(state.service + ": by protocol and operation" + (o.truncated ? " (the busiest only)" : ""));
  table.append(el("thead", {}, el("tr", {}, ["protocol", "side", "operation"].concat(RED_HEAD).map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const op of o.operations) {
    body.append(el("tr", { "data-protocol": op.protocol, "data-operation": op.operation },
      el("td", {}, op.protocol), el("td", {}, op.side), el("td", {}, op.operation), redCells(op)));
  }
  table.append(body);
}

// ------------------------------------------------------------------------------------------
// Traces: the store's Zipkin API, a list and one trace's waterfall.

function filterForm() { return document.getElementById("trace-filter"); }

function setFilter(f) {
  const form = filterForm();
  if (f.service !== undefined) {
    const sel = form.elements.service;
    if (f.service && ![...sel.options].some((o) => o.value === f.service.toLowerCase())) sel.append(el("option", { value: f.service.toLowerCase() }, f.service.toLowerCase()));
    sel.value = (f.service || "").toLowerCase();
  }
  if (f.remote !== undefined) form.elements.remote.value = f.remote;
  if (f.min !== undefined) form.elements.min.value = f.min;
  if (f.errors !== undefined) form.elements.errors.checked = f.errors;
  if (f.order !== undefined) form.elements.order.value = f.order;
}

async function loadServiceNames() {
  const names = await getJson("api/v2/services");
  const sel = filterForm().elements.service;
  const current = sel.value;
  const have = new Set([...sel.options].map((o) => o.value));
  for (const n of names) if (!have.has(n)) sel.append(el("option", { value: n }, n));
  sel.value = current;
}

function isError(span) { return !!(span.tags && span.tags.error !== undefined); }

async function loadTraces() {
  await loadServiceNames();
  const f = filterForm().elements;
  const q = new URLSearchParams();
  const limit = Math.min(1000, Math.max(1, parseInt(f.limit.value, 10) || 50));
  if (f.service.value) q.set("serviceName", f.service.value);
  if (f.remote.value.trim()) q.set("remoteServiceName", f.remote.value.trim().toLowerCase());
  const min = parseFloat(f.min.value);
  if (min > 0) q.set("minDuration", String(Math.round(min * 1000)));
  if (f.errors.checked) q.set("annotationQuery", "error");
  q.set("lookback", String(state.window * 60 * 1000));
  // The slowest among the most recent (the API returns the most recent first).
  q.set("limit", String(f.order.value === "slowest" ? Math.max(limit, 200) : limit));
  let traces = await getJson("api/v2/traces?" + q.toString());
  const rows = traces.map((spans) => {
    const start = Math.min(...spans.map((s) => s.timestamp || Infinity));
    const end = Math.max(...spans.map((s) => (s.timestamp || 0) + (s.duration || 0)));
    const ids = new Set(spans.map((s) => s.id));
    const root = spans.filter((s) => !s.parentId || !ids.has(s.parentId)).sort((a, b) => a.timestamp - b.timestamp)[0] || spans[0];
    const services = [...new Set(spans.map((s) => s.localEndpoint && s.localEndpoint.serviceName).filter(Boolean))];
    return { id: spans[0].traceId, start, duration: end - start, spans: spans.length, root, services, error: spans.some(isError) };
  });
  if (f.order.value === "slowest") rows.sort((a, b) => b.duration - a.duration);
  const table = clear(document.getElementById("trace-table"));
  table.append(el("thead", {}, el("tr", {}, ["start", "root", "services", "spans", "duration", ""].map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const r of rows.slice(0, limit)) {
    body.append(el("tr", { class: "clickable" + (r.id === state.trace ? " selected" : ""), "data-trace-id": r.id,
      "data-root": r.root.name || "", "data-duration": r.duration, onclick: () => showTrace(r.id) },
      el("td", {}, new Date(r.start / 1000).toLocaleTimeString()),
      el("td", {}, (r.root.localEndpoint ? r.root.localEndpoint.serviceName + ": " : "") + (r.root.name || "")),
      el("td", {}, r.services.join(", ")), el("td", { class: "num" }, r.spans),
      el("td", { class: "num" }, fmtMicros(r.duration)), el("td", { class: r.error ? "err" : "" }, r.error ? "error" : "")));
  }
  if (rows.length === 0) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No trace matches.")));
  table.append(body);
  if (state.trace) await showTrace(state.trace, true);
}

// Parents before children, siblings by start time. A server span that shares its id with the
// client span of the same request (Zipkin's `shared`) goes right under that client span.
function ordered(spans) {
  const key = (s) => s.id + (s.shared ? "/shared" : "");
  const byKey = new Map(spans.map((s) => [key(s), s]));
  const parentOf = (s) => {
    if (s.shared && byKey.has(s.id)) return s.id;
    return s.parentId && byKey.has(s.parentId) ? s.parentId : null;
  };
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    const p = parentOf(s);
    if (p === null) roots.push(s);
    else { if (!children.has(p)) children.set(p, []); children.get(p).push(s); }
  }
  const byStart = (a, b) => (a.timestamp || 0) - (b.timestamp || 0) || (a.shared ? 1 : 0) - (b.shared ? 1 : 0);
  const out = [];
  const visit = (s, depth) => {
    out.push({ span: s, depth });
    if (depth > 64) return;
    const own = (children.get(key(s)) || []).slice().sort(byStart);
    for (const c of own) visit(c, depth + 1);
  };
  roots.sort(byStart).forEach((r) => visit(r, 0));
  return out;
}

async function showTrace(id, quiet) {
  state.trace = id;
  document.querySelectorAll("#trace-table tr.selected").forEach((x) => x.classList.remove("selected"));
  const row = document.querySelector('#trace-table tr[data-trace-id="' + CSS.escape(id) + '"]');
  if (row) row.classList.add("selected");
  let spans;
  try { spans = await getJson("api/v2/trace/" + encodeURIComponent(id)); } catch (e) { if (!quiet) throw e; return; }
  const rows = ordered(spans);
  const start = Math.min(...spans.map((s) => s.timestamp || Infinity));
  const end = Math.max(...spans.map((s) => (s.timestamp || 0) + (s.duration || 0)));
  const total = Math.max(1, end - start);
  const box = clear(document.getElementById("waterfall"));
  box.append(el("div", { class: "wf-row wf-head" }, el("div", { class: "wf-label" }, "trace " + id + " · " + spans.length + " spans"),
    el("div", { class: "wf-track" }), el("div", { class: "wf-dur" }, fmtMicros(total))));
  rows.forEach(({ span, depth }, i) => {
    const svc = span.localEndpoint ? span.localEndpoint.serviceName : "?";
    const left = (100 * ((span.timestamp || start) - start)) / total;
    const width = (100 * (span.duration || 0)) / total;
    const kind = (span.kind || "").toLowerCase();
    box.append(el("div", { class: "wf-row span-row", "data-span-id": span.id, "data-index": i, "data-depth": depth,
      "data-service": svc, "data-kind": span.kind || "", onclick: (ev) => showSpan(span, ev.currentTarget) },
      el("div", { class: "wf-label", style: "padding-left:" + (6 + depth * 16) + "px" },
        svc + " ", el("span", { class: "muted" }, (kind ? kind + " " : "") + (span.name || ""))),
      el("div", { class: "wf-track" }, el("div", { class: "wf-bar " + kind + (isError(span) ? " error" : ""),
        style: "left:" + left.toFixed(3) + "%;width:" + width.toFixed(3) + "%" })),
      el("div", { class: "wf-dur" }, fmtMicros(span.duration || 0))));
  });
  clear(document.getElementById("span-detail"));
}

function showSpan(span, rowEl) {
  document.querySelectorAll(".wf-row.selected").forEach((x) => x.classList.remove("selected"));
  rowEl.classList.add("selected");
  const box = clear(document.getElementById("span-detail"));
  const rows = [["service", span.localEndpoint && span.localEndpoint.serviceName], ["name", span.name], ["kind", span.kind],
    ["span id", span.id], ["parent id", span.parentId], ["duration", fmtMicros(span.duration || 0)],
    ["remote", span.remoteEndpoint && [span.remoteEndpoint.serviceName, span.remoteEndpoint.ipv4 || span.remoteEndpoint.ipv6, span.remoteEndpoint.port].filter(Boolean).join(" ")]];
  for (const [k, v] of Object.entries(span.tags || {})) rows.push([k, v]);
  box.append(el("h2", {}, "span " + span.id),
    el("table", { class: "grid", id: "span-tags" }, el("tbody", {}, rows.filter((r) => r[1] !== undefined && r[1] !== null && r[1] !== "")
      .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))));
}

// ------------------------------------------------------------------------------------------
// Health: what the agent lost, turned away or dropped.

async function loadHealth() {
  const h = await getJson("api/v1/health");
  const box = clear(document.getElementById("health-body"));
  const table = el("table", { class: "grid", id: "health-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "counter"), el("th", {}, "labels"), el("th", {}, "value"))));
  const body = el("tbody");
  for (const f of h.families) {
    let samples = f.samples.length ? f.samples : [{ labels: {}, value: null }];
    // Many series all at zero: one row says so.
    if (samples.length > 3 && samples.every((s) => s.value === 0)) {
      body.append(el("tr", { "data-family": f.name }, el("td", {}, f.name),
        el("td", { class: "muted" }, samples.length + " series"), el("td", { class: "num" }, "all 0")));
      continue;
    }
    for (const s of samples) {
      const labels = Object.entries(s.labels).map(([k, v]) => k + "=" + v).join(", ");
      const bad = s.value > 0 && !/programs_attached|connections_tracked|trace_store_(spans|traces)$/.test(f.name);
      body.append(el("tr", { "data-family": f.name }, el("td", {}, f.name), el("td", {}, labels),
        el("td", { class: "num" + (bad ? " err" : "") }, s.value === null ? "–" : s.value)));
    }
  }
  table.append(body);
  box.append(table);
}

// ------------------------------------------------------------------------------------------

const LOADERS = { map: loadMap, services: loadServices, traces: loadTraces, health: loadHealth };

function showError(e) { setStatus(String(e.message || e), true); }

async function refresh() {
  try {
    await LOADERS[state.tab]();
    setStatus("updated " + new Date().toLocaleTimeString(), false);
  } catch (e) {
    showError(e);
  }
}

function go(tab) {
  if (!LOADERS[tab]) tab = "map";
  if (location.hash !== "#" + tab) history.replaceState(null, "", "#" + tab);
  state.tab = tab;
  document.querySelectorAll(".tab").forEach((s) => s.classList.toggle("active", s.id === tab));
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  clearInterval(state.timer);
  refresh();
  // The trace list stays as searched; everything else follows the live data.
  if (tab !== "traces") state.timer = setInterval(refresh, REFRESH_MS);
}

function setWindow(w) {
  state.window = w;
  document.querySelectorAll("#window button").forEach((b) => b.classList.toggle("active", Number(b.dataset.window) === w));
}

document.querySelectorAll("#window button").forEach((b) => b.addEventListener("click", () => { setWindow(Number(b.dataset.window)); refresh(); }));
document.querySelectorAll("#tabs a").forEach((a) => a.addEventListener("click", (ev) => { ev.preventDefault(); go(a.dataset.tab); }));
filterForm().addEventListener("submit", (ev) => { ev.preventDefault(); state.trace = null; clear(document.getElementById("waterfall")); refresh(); });
window.addEventListener("hashchange", () => go(location.hash.slice(1)));
document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = ev.target.elements.token.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  ev.target.elements.token.value = "";
  ev.target.hidden = true;
  go(state.tab);
});
const params = new URLSearchParams(location.search);
setWindow([1, 5, 15].includes(Number(params.get("window"))) ? Number(params.get("window")) : 5);
go(location.hash.slice(1) || "map");
