// Opens the agent's web page in headless Chromium (as web_page.js does) when the agent requires a
// bearer token, and reports as one JSON object on stdout what happened:
//   node web_token.js <agent base URL> <wrong token> <token> <client>,<server>,<requests>
// The page must ask for the token (the API answers 401 without it), say so again after a wrong
// one, and with the right one load the map showing the expected edge with its request count.
// The agent's certificate (a test's self-signed one) is not checked. Every request the page makes,
// with whether it carried the token, and every console error are reported; the test judges them.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [base, wrong, token, edge] = process.argv.slice(2);
const [client, server, n] = edge.split(",");
const DEADLINE_MS = 120000;

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "meshtap-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    chromiumSandbox: false,
    ignoreHTTPSErrors: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = { requests: [], console_errors: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("request", (r) => out.requests.push({ url: r.url(), authorization: r.headers()["authorization"] || null }));
    page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
    page.on("pageerror", (e) => out.console_errors.push("pageerror: " + e.message));

    await page.goto(base + "/?window=15#map");
    await page.waitForSelector("#token-form:not([hidden])", { timeout: 20000 });
    out.asked = await page.textContent("#token-hint");
    out.status_before = await page.textContent("#status");
    await page.fill("#token-form input[name=token]", wrong);
    await page.click("#token-form button");
    await page.waitForFunction(() => !document.getElementById("token-form").hidden &&
      document.getElementById("token-hint").textContent.startsWith("wrong"), null, { timeout: 20000 });
    out.asked_again = await page.textContent("#token-hint");
    await page.fill("#token-form input[name=token]", token);
    await page.click("#token-form button");
    await page.waitForFunction(([client, server, n]) =>
      [...document.querySelectorAll("#map-svg .edge")].some((g) =>
        g.dataset.client === client && g.dataset.server === server && Number(g.dataset.requests) === Number(n)),
      [client, server, n], { timeout: 60000, polling: 500 }).catch(() => {});
    out.form_hidden = await page.$eval("#token-form", (f) => f.hidden);
    out.edges = await page.$$eval("#map-svg .edge", (gs) => gs.map((g) => ({
      client: g.dataset.client, server: g.dataset.server, requests: Number(g.dataset.requests) })));
    out.stored = await page.evaluate(() => sessionStorage.getItem("meshtap.token"));
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

const timer = setTimeout(() => { console.error("web_token.js: deadline passed"); process.exit(3); }, DEADLINE_MS);
main().then(() => clearTimeout(timer), (e) => { console.error(e && e.stack || e); process.exit(2); });
