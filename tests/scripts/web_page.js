// Opens the agent's web page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core, installed by `cargo xtask setup` under /usr/local/lib/meshtap/node) and
// reports what a person would see, as one JSON object on stdout:
//   node web_page.js <agent base URL> <artifact dir> <client>,<server>,<requests> ...
// It waits until the map shows every expected edge with its request count (the page refreshes
// every 5 s), opens the slowest traces of the last expected edge and the first one's waterfall,
// one service's operations and the health table, and saves a screenshot of each view. Every
// request the page makes and every console error is reported; the test judges them.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [base, artifacts, ...edgeArgs] = process.argv.slice(2);
// `client,server,requests` for an edge with requests, `tcp:client,server,connections` for a
// TCP-only one.
const parse = (a) => {
  const [client, server, n] = a.replace(/^tcp:/, "").split(",");
  return { client, server, n: Number(n), tcp: a.startsWith("tcp:") };
};
const all = edgeArgs.map(parse);
const expected = all.filter((e) => !e.tcp).map((e) => ({ client: e.client, server: e.server, requests: e.n }));
const expectedTcp = all.filter((e) => e.tcp);
const DEADLINE_MS = 120000;

async function main() {
  fs.mkdirSync(artifacts, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "meshtap-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    chromiumSandbox: false,
    viewport: { width: 1500, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = { requests: [], console_errors: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("request", (r) => out.requests.push(r.url()));
    page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
    page.on("pageerror", (e) => out.console_errors.push("pageerror: " + e.message));
    page.on("requestfailed", (r) => out.console_errors.push("request failed: " + r.url() + " " + (r.failure() || {}).errorText));

    await page.goto(base + "/?window=15#map");
    // The map, once it shows every expected edge with its count.
    const want = JSON.stringify(all);
    await page.waitForFunction((want) => JSON.parse(want).every((e) =>
      [...document.querySelectorAll(e.tcp ? "#map-svg .tcp-edge" : "#map-svg .edge")].some((g) =>
        g.dataset.client === e.client && g.dataset.server === e.server &&
        Number(e.tcp ? g.dataset.connections : g.dataset.requests) === e.n)), want,
      { timeout: 60000, polling: 500 }).catch(() => {});
    out.tcp_edges = await page.$$eval("#map-svg .tcp-edge", (gs) => gs.map((g) => ({
      client: g.dataset.client, server: g.dataset.server, port: g.dataset.port,
      connections: Number(g.dataset.connections) })));
    out.edges = await page.$$eval("#map-svg .edge", (gs) => gs.map((g) => ({
      client: g.dataset.client, server: g.dataset.server, requests: Number(g.dataset.requests),
      failed: Number(g.dataset.failed), label: [...g.querySelectorAll("text")].map((t) => t.textContent).join(" · ") })));
    out.nodes = await page.$$eval("#map-svg .node", (ns) => ns.map((n) => n.dataset.service));
    await page.screenshot({ path: path.join(artifacts, "map.png"), fullPage: true });

    // The last expected edge: its slowest traces, and the first one's waterfall.
    const last = expected[expected.length - 1];
    // A click on the edge's curve (dispatched: the middle of a curve's box may be off the curve).
    await page.$eval(`#map-svg .edge[data-client="${last.client}"][data-server="${last.server}"] path`,
      (p) => p.dispatchEvent(new MouseEvent("click", { bubbles: true })));
    await page.click("#edge-slowest");
    await page.waitForSelector("#trace-table tr[data-trace-id]", { timeout: 20000 });
    out.trace_rows = await page.$$eval("#trace-table tr[data-trace-id]", (rs) => rs.map((r) => ({
      id: r.dataset.traceId, root: r.dataset.root, duration: Number(r.dataset.duration) })));
    // The slowest trace whose root is the request the test calls slow.
    const chosen = out.trace_rows.find((r) => r.root === process.env.WEB_TRACE_ROOT) || out.trace_rows[0];
    await page.click(`#trace-table tr[data-trace-id="${chosen.id}"]`);
    await page.waitForSelector("#waterfall .span-row", { timeout: 20000 });
    out.trace_id = chosen.id;
    out.waterfall = await page.$$eval("#waterfall .span-row", (rs) => rs.map((r) => ({
      id: r.dataset.spanId, depth: Number(r.dataset.depth), service: r.dataset.service, kind: r.dataset.kind })));
    await page.click(`#waterfall .span-row[data-index="${Math.min(3, out.waterfall.length - 1)}"]`);
    await page.waitForSelector("#span-tags tr");
    out.span_tags = await page.$$eval("#span-tags tr", (rs) => rs.map((r) => [r.cells[0].textContent, r.cells[1].textContent]));
    await page.screenshot({ path: path.join(artifacts, "trace.png"), fullPage: true });

    // One service's operations.
    await page.click('#tabs a[data-tab="services"]');
    await page.click(`#service-table tr[data-service="${last.server}"]`);
    await page.waitForSelector("#operation-table tr[data-operation]", { timeout: 20000 });
    out.operations = await page.$$eval("#operation-table tr[data-operation]", (rs) => rs.map((r) => ({
      protocol: r.dataset.protocol, operation: r.dataset.operation, requests: Number(r.cells[3].textContent) })));
    await page.screenshot({ path: path.join(artifacts, "services.png"), fullPage: true });

    await page.click('#tabs a[data-tab="health"]');
    await page.waitForSelector("#health-table tr[data-family]", { timeout: 20000 });
    out.health = await page.$$eval("#health-table tr[data-family]", (rs) => [...new Set(rs.map((r) => r.dataset.family))]);
    await page.screenshot({ path: path.join(artifacts, "health.png"), fullPage: true });
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

const timer = setTimeout(() => { console.error("web_page.js: deadline passed"); process.exit(3); }, DEADLINE_MS);
main().then(() => clearTimeout(timer), (e) => { console.error(e && e.stack || e); process.exit(2); });
