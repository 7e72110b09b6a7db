// The dashboard end to end in headless Chromium (run by scripts/browser_test.sh).
//
// Environment: BASE_URL (a running aiqueue-server with an embedded worker),
// API_TOKEN (the token it was started with), CHROMIUM (the browser binary),
// ARTIFACTS (a directory for the screenshots). Exit status 0 when every
// check passed; every wait has a deadline, so a hang is a failure too.
"use strict";

const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const BASE = process.env.BASE_URL;
const TOKEN = process.env.API_TOKEN;
const ART = process.env.ARTIFACTS;
const DEMO = "aiqueue.demo.progress";
const STEP_MS = 15000; // the longest any single wait may take

let checks = 0;
function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  checks++;
}

async function api(method, p, body) {
  const r = await fetch(BASE + p, {
    method,
    headers: { Authorization: "Bearer " + TOKEN, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json();
  if (!r.ok) throw new Error(method + " " + p + ": " + r.status + " " + JSON.stringify(data));
  return data;
}

// Poll fn() (in Node) until it returns a truthy value, or fail after STEP_MS.
async function until(what, fn, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("timed out waiting for " + what + " (last: " + JSON.stringify(last) + ")");
}

function rowState(page, table, id) {
  return page.evaluate(
    ([t, k]) => {
      for (const tr of document.querySelectorAll("#" + t + " tbody tr"))
        if (tr.dataset.key === k) return tr.cells[2] ? tr.cells[2].textContent : "";
      return null;
    },
    [table, id]);
}

function row(page, table, id) {
  return page.locator("#" + table + " tbody tr").filter({ has: page.locator("td", { hasText: id }) });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const problems = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1100 } });
    const page = await context.newPage();
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => {
      // A refused stream (401) before the token is given is expected, and
      // the browser's own look for /favicon.ico (the server has none).
      const where = (m.location() && m.location().url) || "";
      if (m.type() === "error" && !/401|EventSource/.test(m.text()) && !/\/favicon\.ico$/.test(where))
        problems.push("console: " + m.text());
    });

    // 1. The page, its headers, and the token it asks for.
    const resp = await page.goto(BASE + "/dashboard");
    check(resp.status() === 200, "GET /dashboard is 200");
    const h = resp.headers();
    check(/script-src 'self'/.test(h["content-security-policy"] || ""), "CSP header");
    check(h["x-content-type-options"] === "nosniff", "nosniff header");
    await until("the page to ask for a token", async () =>
      (await page.textContent("#conn")) === "token needed");
    await page.fill("#token", TOKEN);
    await page.click("#token-form button");
    await until("the stream to go live", async () => (await page.textContent("#conn")) === "live");
    check((await page.inputValue("#token")) === "", "the token field is cleared");

    // 2. A task through the API: queued (countdown) -> STARTED -> PROGRESS -> SUCCESS.
    const t1 = (await api("POST", "/tasks",
      { task: DEMO, args: [3, 1200], options: { countdown: 2 } })).task_id;
    const seen = [];
    const progressTexts = new Set();
    let shot = false;
    await until("the row of " + t1, async () => (await rowState(page, "tasks", t1)) !== null);
    await row(page, "tasks", t1).locator("button.open").click();
    await until(t1 + " to reach SUCCESS", async () => {
      const s = await rowState(page, "tasks", t1);
      if (s && seen[seen.length - 1] !== s) seen.push(s);
      if (s === "PROGRESS") {
        progressTexts.add(await page.textContent("#detail-progress-text"));
        if (!shot && (await page.textContent("#detail-progress-text")) === "1 / 3") {
          await page.screenshot({ path: path.join(ART, "dashboard-progress.png"), fullPage: true });
          shot = true;
        }
      }
      return s === "SUCCESS";
    }, 20000);
    const order = ["PENDING", "STARTED", "PROGRESS", "SUCCESS"];
    check(JSON.stringify(seen) === JSON.stringify(order), "states in order, got " + seen.join(" -> "));
    check(progressTexts.has("1 / 3") && progressTexts.has("2 / 3"),
      "the detail showed PROGRESS 1/3 and 2/3 live, got " + [...progressTexts].join(", "));
    check(shot, "a screenshot during PROGRESS");
    check((await page.textContent("#detail-id")) === t1, "the detail shows the task");
    check((await page.textContent("#detail-state")) === "SUCCESS", "the detail shows SUCCESS");
    check(JSON.parse(await page.textContent("#detail-result")).steps === 3, "the detail shows the result");
    check(/^\d+\.\d s$/.test(await row(page, "tasks", t1).locator("td").nth(3).textContent()),
      "a runtime is shown");

    // 3. A dead letter (a typo in the task name), sent with the page's form,
    //    requeued under the right name: it runs to SUCCESS.
    await page.fill("#enqueue-task", "dash.typo_task");
    await page.fill("#enqueue-args", "[2, 100]");
    await page.click("#enqueue-button");
    const sent = await until("the form's reply", async () => {
      const m = (await page.textContent("#message")).match(/^Sent (\S+)$/);
      return m && m[1];
    });
    await until("the dead letter of " + sent, async () => (await row(page, "dead", sent).count()) === 1);
    check(/unregistered task 'dash.typo_task'/.test(await row(page, "dead", sent).textContent()),
      "the dead letter gives its reason");
    await until("the dead-letter queue depth", async () => {
      const txt = await page.locator("#queues tbody tr", { hasText: "celery.dead" }).textContent();
      return /dead[^0-9]*[1-9]/.test(txt);
    });
    // The form opened the new task's detail: no progress left over from the last one.
    await until("the detail of " + sent, async () =>
      (await page.textContent("#detail-id")) === sent &&
      (await page.textContent("#detail-state")) === "FAILURE");
    check((await page.evaluate(() => document.getElementById("detail-progress").value)) === 0,
      "the progress bar is reset for another task");
    check(/NotRegistered/.test(await page.textContent("#detail-error")), "the detail shows the error");
    await page.screenshot({ path: path.join(ART, "dashboard-dead-letter.png"), fullPage: true });
    await page.fill("#requeue-task", DEMO);
    await row(page, "dead", sent).locator("button.requeue").click();
    const requeued = await until("the requeue reply", async () => {
      const m = (await page.textContent("#message")).match(/^Requeued (\S+) as (\S+)$/);
      return m && m[1] === sent && m[2];
    });
    await until(requeued + " to reach SUCCESS",
      async () => (await rowState(page, "tasks", requeued)) === "SUCCESS");
    await until("the dead letter to leave the list", async () => (await row(page, "dead", sent).count()) === 0);
    check((await rowState(page, "tasks", sent)) === "FAILURE", "the dead letter's own id stays FAILURE");

    // 4. Delete a dead letter; its name is markup, shown as text only.
    const evil = "<img src=x onerror=window.pwned=1>";
    const bad = (await api("POST", "/tasks", { task: evil, args: [] })).task_id;
    await until("the dead letter of " + bad, async () => (await row(page, "dead", bad).count()) === 1);
    check((await row(page, "dead", bad).locator("td").nth(1).textContent()) === evil,
      "a name with markup is shown as text");
    check((await page.locator("img").count()) === 0, "no element came from data");
    check((await page.evaluate(() => window.pwned)) === undefined, "no script ran from data");
    await row(page, "dead", bad).locator("button.delete").click();
    await until("the deleted dead letter to go", async () => (await row(page, "dead", bad).count()) === 0);
    check((await api("GET", "/dead-letters")).dead_letters.every((d) => d.task_id !== bad),
      "the server forgot it too");

    // 5. Revoke a long task with its button.
    const long = (await api("POST", "/tasks", { task: DEMO, args: [100, 200] })).task_id;
    await until(long + " to run", async () =>
      ["STARTED", "PROGRESS"].includes(await rowState(page, "tasks", long)));
    await row(page, "tasks", long).locator("button.revoke").click();
    await until(long + " to be REVOKED", async () => (await rowState(page, "tasks", long)) === "REVOKED");
    check(await row(page, "tasks", long).locator("button.revoke").isHidden(),
      "no revoke button on a final task");
    check((await api("GET", "/tasks/" + long)).state === "REVOKED", "the store says REVOKED");

    // 6. Workers and throughput.
    const w = await page.locator("#workers tbody tr").first().textContent();
    check(/^embedded/.test(w) && /online/.test(w) && /ago/.test(w), "the worker row: " + w);
    const pts = (await page.getAttribute("#spark polyline", "points")).split(" ");
    check(pts.length === 60, "60 throughput points");
    check(pts.some((p) => parseFloat(p.split(",")[1]) < 48), "the sparkline shows finished tasks");
    check(parseInt(await page.textContent("#finished"), 10) >= 3, "finished count");
    await page.click("#detail-close");
    await page.screenshot({ path: path.join(ART, "dashboard.png"), fullPage: true });

    check(problems.length === 0, "no page errors: " + problems.join("; "));
  } finally {
    await browser.close();
  }
}

main().then(
  () => {
    console.log("browser checks: " + checks + " passed");
    process.exit(0);
  },
  (e) => {
    console.error("browser test failed after " + checks + " checks: " + (e && e.stack ? e.stack : e));
    process.exit(1);
  });
