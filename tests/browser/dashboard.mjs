// The dashboard in a real browser: a node with data, then every page an operator uses.
// Run by scripts/browser-test.sh (which installs Chromium and playwright-core when absent).
// Screenshots go to $SCREENSHOTS (default target/screenshots).

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BIN = process.env.HOOKLINE_BIN;
const SHOTS = process.env.SCREENSHOTS || "target/screenshots";
const TOKEN = "browser-test-token-" + Math.random().toString(36).slice(2);
mkdirSync(SHOTS, { recursive: true });

function fail(message) {
  console.error("dashboard test FAILED: " + message);
  process.exitCode = 1;
  throw new Error(message);
}
function check(cond, message) {
  if (!cond) fail(message);
}
async function until(what, fn, ms = 20000) {
  const start = Date.now();
  for (;;) {
    if (await fn()) return;
    if (Date.now() - start > ms) fail("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// A target: /ok answers a ticket; /flaky fails until told otherwise.
let flakyFails = true;
let calls = 0;
const sink = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    calls++;
    const bad = req.url.startsWith("/flaky") && flakyFails;
    res.writeHead(bad ? 503 : 200, { "content-type": "application/json" });
    res.end(JSON.stringify(bad ? { error: "down for maintenance" } : { ticketId: "T-" + calls }));
  });
});
await new Promise((r) => sink.listen(0, "127.0.0.1", r));
const target = `http://127.0.0.1:${sink.address().port}`;

// The node, on the embedded store, with an API token.
const dir = mkdtempSync(join(tmpdir(), "hookline-browser-"));
const node = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dir, "--allow-target", "127.0.0.0/8",
  "--api-token", TOKEN, "--node-id", "browser", "--jaeger-url", "http://jaeger.example:16686"],
  { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
const base = await new Promise((resolve, reject) => {
  let out = "";
  node.stdout.on("data", (d) => {
    out += d;
    const m = out.match(/listening on (http:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
  node.on("exit", (code) => reject(new Error("hookline exited " + code)));
});

async function api(method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: { authorization: "Bearer " + TOKEN, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (r.status >= 400) fail(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

let browser;
try {
  await api("POST", "/v1/objects", { name: "ticket", id_field: "ref", fields: [
    { key: "ref", type: "string" }, { key: "status", label: "Status", type: "string" },
    { key: "score", label: "Score", type: "number" }, { key: "email", type: "string" }] });
  await api("POST", "/v1/webhooks", { id: "it-tickets", object: "ticket",
    trigger: { on_create: true, on_update: true, fields: ["Status"], condition: "Status = Open and Score < 5" },
    request: { method: "POST", url: target + "/ok", body_template: '{"ref": "{{ record.ref }}", "score": {{ record.score }}}' },
    auth: { type: "token", header: "X-Api-Key", value: "very-secret-key" },
    settings: { max_concurrency: 4, retries: 1, retry_wait: "100ms" } });
  await api("POST", "/v1/webhooks", { id: "crm-sync", object: "ticket", trigger: { on_create: true },
    request: { method: "POST", url: target + "/flaky", body_template: "{}" }, settings: { retries: 0 } });
  for (const [ref, status, score] of [["R1", "Open", 2], ["R2", "Closed", 9], ["R3", "Open", 1], ["R4", "Open", 3]]) {
    await api("POST", "/v1/objects/ticket/records", { fields: { ref, status, score, email: ref.toLowerCase() + "@example.com" } });
  }
  await api("PATCH", "/v1/objects/ticket/records/R2", { fields: { status: "Open", score: 8 } });
  await until("the calls", async () => (await api("GET", "/v1/webhooks/crm-sync/dead-letters")).length === 4
    && (await api("GET", "/v1/webhooks/it-tickets/attempts")).length === 3);

  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const shot = async (name) => {
    const png = await page.screenshot({ path: join(SHOTS, name + ".png"), fullPage: true });
    check(png.length > 15000, `${name}.png looks blank (${png.length} bytes)`);
    const visible = await page.evaluate(() => document.body.innerText.trim().length);
    check(visible > 50, `${name}: the page shows no text`);
  };

  // Signing in: the form, a wrong token refused, then the cookie (HttpOnly, not in URLs).
  await page.goto(base + "/");
  check(page.url().endsWith("/login"), "an unsigned visit goes to the login form, not " + page.url());
  await page.fill("input[name=token]", "wrong");
  await page.click("main button[type=submit]");
  check((await page.locator("p.error").innerText()).includes("not this node's token"), "a wrong token is refused");
  await page.fill("input[name=token]", TOKEN);
  await page.click("main button[type=submit]");
  await page.waitForSelector("#webhooks");
  check(!page.url().includes(TOKEN), "no token in the URL");
  check((await page.evaluate(() => document.cookie)) === "", "the session cookie is HttpOnly");
  const cookies = await page.context().cookies();
  check(cookies.some((c) => c.httpOnly && c.sameSite === "Strict"), "HttpOnly, SameSite=Strict cookie");

  // The overview: both webhooks with their numbers.
  const row = async (id) => page.locator(`tr[data-webhook="${id}"]`).innerText();
  const tickets = await row("it-tickets");
  check(tickets.includes("active") && tickets.includes("100.0%"), "it-tickets row: " + tickets);
  const crm = await row("crm-sync");
  check(crm.includes("0.0%") && crm.includes("4") && crm.includes("503"), "crm-sync row: " + crm);
  await shot("overview");
  await page.click("th a[href='/?sort=dead']");
  check((await page.locator("#webhooks tbody tr").first().getAttribute("data-webhook")) === "crm-sync", "sorted by dead letters");

  // A webhook: numbers, the definition with its secret hidden, attempts filtered, one opened.
  await page.click("a[href='/ui/webhooks/it-tickets']");
  await page.waitForSelector("#attempts");
  check((await page.locator("#definition").textContent()).includes('"value": "***"'), "the secret shows as ***");
  check(!(await page.content()).includes("very-secret-key"), "the secret is nowhere on the page");
  await page.selectOption("#filters select[name=outcome]", "success");
  await page.fill("#filters input[name=record]", "R3");
  await page.click("#filters button");
  await page.waitForSelector("#attempts");
  const rows = await page.locator("#attempts tbody tr").allInnerTexts();
  check(rows.length === 1 && rows[0].includes("R3") && rows[0].includes("success"), "filtered attempts: " + rows);
  await shot("webhook");
  await page.click("#attempts tbody tr a >> nth=0");
  await page.waitForSelector("text=Request");
  const attempt = await page.content();
  check(attempt.includes("X-Api-Key: ***") && attempt.includes("HTTP 200") && attempt.includes("T-"), "the attempt's request and response");
  check(attempt.includes("http://jaeger.example:16686/trace/"), "the trace links to Jaeger");
  await shot("attempt");

  // A record's journey: R2 was created Closed (the condition false, and why), then opened.
  await page.goto(base + "/");
  await page.fill("form.search input[name=object]", "ticket");
  await page.fill("form.search input[name=id]", "R2");
  await page.click("form.search button");
  await page.waitForSelector("ol.journey");
  const first = page.locator('li.change[data-version="1"] li[data-webhook="it-tickets"]');
  const why = await first.innerText();
  check(why.includes("not fired") && why.includes("its condition was false"), "why R2's creation did not fire: " + why);
  check(why.includes("status = \"Open\"") && why.includes("score < 5") && why.includes("score is 9"), "each part of the condition: " + why);
  const second = await page.locator('li.change[data-version="2"] li[data-webhook="it-tickets"]').innerText();
  check(second.includes("not fired") && second.includes("score < 5"), "the update to score 8 still fails the condition: " + second);
  const crmOnCreate = await page.locator('li.change[data-version="1"] li[data-webhook="crm-sync"]').innerText();
  check(crmOnCreate.includes("fired") && crmOnCreate.includes("dead lettered"), "crm-sync fired and was dead-lettered: " + crmOnCreate);
  check((await page.locator('li.change[data-version="2"] li[data-webhook="crm-sync"]').innerText()).includes("does not fire when a record is updated"), "crm-sync on update");
  await shot("journey");

  // Try it: a dry run on pasted fields.
  await page.goto(base + "/ui/webhooks/it-tickets");
  await page.fill("#try textarea", '{"ref": "X", "status": "Open", "score": 1}');
  await page.click("#dry-run");
  await page.waitForSelector("#try-result");
  const tried = await page.locator("#try-result").innerText();
  check(tried.includes("true") && tried.includes('"score": 1') && tried.includes("X-Api-Key: ***"), "the dry run: " + tried);
  check(calls === 7, "a dry run sends nothing (calls: " + calls + ")");
  // Sent when asked: R2 (its condition false) goes out anyway, as a recorded attempt.
  await page.fill("#try textarea", "R2");
  await page.click("#send");
  await page.waitForSelector("#sent");
  check((await page.locator("#sent").innerText()).includes("sent as job"), "sent by hand");
  await until("the hand-sent attempt", async () => (await api("GET", "/v1/webhooks/it-tickets/attempts?record_id=R2")).length === 1);
  check(calls === 8, "one call for the hand-sent job (calls: " + calls + ")");

  // Dead letters: redrive them once the target is back, and see them delivered.
  await page.goto(base + "/ui/webhooks/crm-sync");
  check((await page.locator("#redrive").innerText()).includes("Redrive all 4 dead letters"), "the count before redriving");
  await shot("dead-letters");
  flakyFails = false;
  const delivered = async (n) => until(`${n} redriven calls delivered`, async () => {
    await page.goto(base + "/ui/webhooks/crm-sync?outcome=success");
    return (await page.locator("#attempts tbody tr").count()) === n;
  });
  // One chosen by its checkbox...
  await page.locator("#dl-form input[type=checkbox]").first().check();
  await page.click("#redrive-selected");
  await delivered(1);
  // ...then those matching a filter, counted before they are sent.
  await page.goto(base + "/ui/webhooks/crm-sync");
  await page.fill("#dl-filter input[name=dl_reason]", "503");
  await page.click("#dl-filter button");
  await page.waitForSelector("#redrive");
  check((await page.locator("#redrive").innerText()).includes("Redrive all 3 matching"), "the matching count");
  await page.click("#redrive");
  await delivered(4);
  await page.goto(base + "/ui/webhooks/crm-sync");
  check((await page.locator("#dead-letters").innerText()).includes("None."), "no dead letters left");

  // Pause and resume.
  await page.click("#toggle");
  await page.waitForSelector("h1 .badge.warn");
  check((await api("GET", "/v1/webhooks/crm-sync")).paused === true, "paused through the page");
  await shot("paused");
  await page.click("#toggle");
  await page.waitForSelector("h1 .badge.ok");
  check((await api("GET", "/v1/webhooks/crm-sync")).paused === false, "resumed through the page");

  // Signed out: the pages are closed again.
  await page.click("header .logout button");
  await page.goto(base + "/ui/webhooks/it-tickets");
  check(page.url().endsWith("/login"), "signed out");
  writeFileSync(join(SHOTS, "ok"), "passed\n");
  console.log(`dashboard test passed; screenshots in ${SHOTS}`);
} finally {
  if (browser) await browser.close();
  node.kill("SIGKILL");
  sink.close();
}
