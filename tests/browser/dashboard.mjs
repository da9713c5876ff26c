#!/usr/bin/env node
// Checks the fngate admin dashboard in headless Chromium: the page loads under its CSP, refuses
// to show anything without the token, shows "unauthorized" for a wrong one and "disconnected"
// when the gateway cannot be reached, and once connected its numbers equal those of
// `GET /admin/overview` fetched here directly (request and error counts per function, instance
// ids, kinds, states and slots). Saves a full-page screenshot. Exit 0: all good; 1: a mismatch
// or failure (printed); 2: bad arguments.
//
//   node dashboard.mjs --url https://127.0.0.1:9443 --ca data/tls/ca.pem --screenshot out.png \
//        [--token-env FNGATE_ADMIN_TOKEN | --token T] [--function demo/echo --expect-requests 200]
//        [--chromium /usr/bin/chromium] [--timeout-ms 30000]

import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import https from "node:https";

// REAL-PARTS.md: what Debian's chromium needs to run headless on these machines.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function parseArgs(argv) {
  const a = { chromium: "/usr/bin/chromium", timeoutMs: 30000, tokenEnv: "FNGATE_ADMIN_TOKEN" };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i], v = argv[i + 1];
    const take = () => { if (v === undefined) usage(`${k} needs a value`); i++; return v; };
    switch (k) {
      case "--url": a.url = take().replace(/\/+$/, ""); break;
      case "--token": a.token = take(); break;
      case "--token-env": a.tokenEnv = take(); break;
      case "--ca": a.ca = take(); break;
      case "--insecure": a.insecure = true; break;
      case "--screenshot": a.screenshot = take(); break;
      case "--function": a.fn = take(); break;
      case "--expect-requests": a.expectRequests = Number(take()); break;
      case "--chromium": a.chromium = take(); break;
      case "--timeout-ms": a.timeoutMs = Number(take()); break;
      default: usage(`unknown argument ${k}`);
    }
  }
  a.token ??= process.env[a.tokenEnv];
  if (!a.url || !a.token || !a.screenshot || (!a.ca && !a.insecure)) {
    usage("--url, --screenshot, --ca (or --insecure) and a token (--token or $" + a.tokenEnv + ") are required");
  }
  return a;
}

function usage(msg) {
  console.error(`dashboard.mjs: ${msg}`);
  process.exit(2);
}

const args = parseArgs(process.argv.slice(2));
const ca = args.ca ? readFileSync(args.ca) : undefined;
const failures = [];
const fail = (msg) => { failures.push(msg); console.error("FAIL: " + msg); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A GET on the admin listener from this script (not the browser), trusting the gateway's CA. */
function adminGet(path, token) {
  return new Promise((resolve, reject) => {
    const req = https.get(args.url + path, {
      ca, rejectUnauthorized: !args.insecure,
      headers: token ? { authorization: "Bearer " + token } : {},
      timeout: 5000,
    }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on("error", reject);
  });
}

async function overview() {
  const r = await adminGet("/admin/overview", args.token);
  if (r.status !== 200) throw new Error(`GET /admin/overview: ${r.status} ${r.body}`);
  return JSON.parse(r.body);
}

/** What the comparison looks at, from the API's answer. */
function apiView(o) {
  return {
    totalRequests: o.totals.requests_total,
    functions: Object.fromEntries(o.functions.map((f) => [f.id, {
      requests: f.requests.total,
      errors: f.requests.errors,
      instances: f.instances.length,
      queue: f.queue_depth,
    }])),
    instances: o.functions.flatMap((f) => f.instances.map((i) => ({
      fn: f.id, id: i.id, kind: i.kind, state: i.state, slots: i.concurrency,
    }))).sort((x, y) => (x.fn + x.id).localeCompare(y.fn + y.id)),
  };
}

/** The same, read off the page's elements. */
async function pageView(page) {
  return page.evaluate(() => {
    const txt = (root, id) => root.querySelector(`[data-testid="${id}"]`)?.textContent.trim();
    const num = (s) => (s === undefined || s === "–" ? null : Number(s));
    const functions = {};
    for (const r of document.querySelectorAll('tr[data-testid="fn-row"]')) {
      functions[r.dataset.fn] = {
        requests: num(txt(r, "fn-requests")),
        errors: num(txt(r, "fn-errors")),
        instances: num(txt(r, "fn-instances")),
        queue: num(txt(r, "fn-queue")),
      };
    }
    const instances = [...document.querySelectorAll('tr[data-testid="inst-row"]')].map((r) => ({
      fn: r.dataset.fn, id: r.dataset.inst, kind: txt(r, "inst-kind"), state: txt(r, "inst-state"),
      slots: num(txt(r, "inst-slots")),
    })).sort((x, y) => (x.fn + x.id).localeCompare(y.fn + y.id));
    return {
      totalRequests: num(txt(document, "total-requests")),
      functions,
      instances,
      updates: Number(document.body.dataset.updates || 0),
      state: document.body.dataset.state,
    };
  });
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function waitFor(what, check, timeoutMs = args.timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last === true) return true;
    await sleep(100);
  }
  fail(`timed out waiting for ${what}${last && last !== true ? `: ${last}` : ""}`);
  return false;
}

const stateOf = (page) => page.evaluate(() => document.body.dataset.state);
const bannerOf = (page) => page.locator('[data-testid="banner"]').textContent();

async function main() {
  // The API itself: no data without the token, the shell is static HTML under a CSP.
  const noTok = await adminGet("/admin/overview");
  if (noTok.status !== 401) fail(`/admin/overview without a token answered ${noTok.status}`);
  const shell = await adminGet("/");
  if (shell.status !== 200 || !/text\/html/.test(shell.headers["content-type"] || "")) {
    fail(`/ answered ${shell.status} ${shell.headers["content-type"]}`);
  }
  if (!/script-src 'sha256-/.test(shell.headers["content-security-policy"] || "")) {
    fail(`/ has no hash-based CSP: ${shell.headers["content-security-policy"]}`);
  }
  if (Buffer.byteLength(shell.body) > 30 * 1024) fail(`the page is ${Buffer.byteLength(shell.body)} bytes`);

  const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: CHROMIUM_ARGS });
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1360, height: 900 } });
    const page = await context.newPage();
    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      // Failed loads of the overview (the refused token, the simulated outage) are expected and
      // checked through the banner; any other console error (a CSP violation, say) is not.
      const expected = /^Failed to load resource/.test(m.text()) && (m.location().url || "").endsWith("/admin/overview");
      if (m.type() === "error" && !expected) problems.push(`console: ${m.text()} (${m.location().url})`);
    });
    page.on("requestfailed", (r) => {
      if (!r.url().endsWith("/admin/overview")) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
    });
    const external = [];
    page.on("request", (r) => { if (!r.url().startsWith(args.url)) external.push(r.url()); });

    const t0 = Date.now();
    await page.goto(args.url + "/", { waitUntil: "load" });
    console.log(`page loaded in ${Date.now() - t0} ms`);

    // Without a token: a prompt, no data.
    if ((await stateOf(page)) !== "no token") fail(`state without a token: ${await stateOf(page)}`);
    if (!/admin token/i.test(await bannerOf(page))) fail(`banner without a token: ${await bannerOf(page)}`);
    if ((await page.locator('tr[data-testid="fn-row"]').count()) !== 0) fail("function rows shown without a token");

    // A wrong token: "unauthorized", still no data.
    await page.fill('[data-testid="token-input"]', "not-the-token");
    await page.click('[data-testid="token-submit"]');
    await waitFor("the unauthorized banner", async () =>
      (await stateOf(page)) === "unauthorized" && /unauthorized/i.test(await bannerOf(page)) || `state ${await stateOf(page)}`, 10000);
    if ((await page.locator('tr[data-testid="fn-row"]').count()) !== 0) fail("function rows shown for a wrong token");

    // The right token, pasted once.
    const t1 = Date.now();
    await page.fill('[data-testid="token-input"]', args.token);
    await page.click('[data-testid="token-submit"]');
    await waitFor("live data", async () => (await stateOf(page)) === "live" || `state ${await stateOf(page)}`);
    console.log(`first data ${Date.now() - t1} ms after connecting`);
    if (page.url().includes(args.token)) fail("the token is in the page URL");
    const stored = await page.evaluate(() => sessionStorage.getItem("fngate.adminToken"));
    if (stored !== args.token) fail("the token is not kept in sessionStorage");

    // The gateway unreachable: "disconnected", then back to live by itself.
    await page.route("**/admin/overview", (r) => r.abort("connectionrefused"));
    await waitFor("the disconnected banner", async () =>
      (await stateOf(page)) === "disconnected" && /disconnected/i.test(await bannerOf(page)) || `state ${await stateOf(page)}`, 10000);
    await page.unroute("**/admin/overview");
    await waitFor("live data again", async () => (await stateOf(page)) === "live" || `state ${await stateOf(page)}`, 10000);

    // The page's numbers equal the API's: fetch, let the page poll after that, read it, fetch
    // again; equal when the API did not move in between and the page shows the same.
    let lastDiff = "";
    const ok = await waitFor("the page to agree with /admin/overview", async () => {
      const before = apiView(await overview());
      const n = (await pageView(page)).updates;
      const polled = await waitFor("a page update", async () => (await pageView(page)).updates > n || "none", 5000);
      if (!polled) return "the page stopped polling";
      const seen = await pageView(page);
      const after = apiView(await overview());
      if (!same(before, after)) return (lastDiff = "the API is still moving");
      const want = { totalRequests: after.totalRequests, functions: after.functions, instances: after.instances };
      const got = { totalRequests: seen.totalRequests, functions: seen.functions, instances: seen.instances };
      if (same(want, got)) {
        console.log("page agrees with the API:", JSON.stringify(got));
        return true;
      }
      return (lastDiff = `page ${JSON.stringify(got)} != API ${JSON.stringify(want)}`);
    });
    if (!ok) console.error("last difference: " + lastDiff);

    const api = await overview();
    if (args.fn) {
      const f = api.functions.find((x) => x.id === args.fn);
      if (!f) fail(`no function ${args.fn} in /admin/overview`);
      else {
        if (args.expectRequests !== undefined && f.requests.total !== args.expectRequests) {
          fail(`${args.fn}: ${f.requests.total} requests, expected ${args.expectRequests}`);
        }
        if (!(f.latency_ms.p50 > 0 && f.latency_ms.p99 >= f.latency_ms.p50)) {
          fail(`${args.fn}: latency p50 ${f.latency_ms.p50}, p99 ${f.latency_ms.p99}`);
        }
        const p50 = await page.locator(`tr[data-fn="${args.fn}"] [data-testid="fn-p50"]`).textContent();
        if (!(Number(p50) > 0)) fail(`${args.fn}: the page shows p50 ${p50}`);
        if (f.requests.series.reduce((s, v) => s + v, 0) > 0) {
          const pts = await page.locator(`tr[data-fn="${args.fn}"] svg.sp polyline`).getAttribute("points");
          if (!pts || pts.split(" ").length !== f.requests.series.length) fail(`${args.fn}: sparkline points ${pts}`);
        }
      }
    }
    const painted = await page.evaluate(() => {
      const c = document.querySelector('[data-testid="sparkline"]');
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      for (let i = 3; i < d.length; i += 4) if (d[i]) return true;
      return false;
    });
    if (!painted) fail("the req/s sparkline canvas is blank");

    mkdirSync(dirname(args.screenshot), { recursive: true });
    await page.screenshot({ path: args.screenshot, fullPage: true });
    console.log(`screenshot: ${args.screenshot}`);

    for (const p of problems) fail(p);
    for (const u of external) fail(`the page fetched something outside the gateway: ${u}`);
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (e) {
  fail(e.stack || String(e));
}
if (failures.length) {
  console.error(`${failures.length} failure(s)`);
  process.exit(1);
}
console.log("dashboard: all checks passed");
