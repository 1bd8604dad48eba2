// The app end to end in headless Chromium (Debian's, through playwright-core), against a real
// server that tests/app/test_app.py starts on a demo project:
//   node test-dist/e2e.js '{"base": "127.0.0.1:PORT", "project": "...", "activity": "...", "tokens": {...}, ...}'
// Specialists A and B and the lead each get a browser context. A goes offline, edits the
// activity's start, reloads offline (the service worker opens the app, the edit is still
// there); B edits the same field online; A comes back; both see the conflict; the lead
// resolves it on the dashboard; all three end equal. Then: a specialist's time change on the
// lead's timeline (latency measured), a viewer's disabled controls and forced push, a
// screenshot of every screen at tablet and phone size, and every request's host.
// Prints one JSON line with what it saw; exits 1 with the reason on stderr on failure.
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

interface Args {
  base: string;
  project: string;
  activity: string;
  tokens: { a: string; b: string; lead: string; viewer: string };
  screenshots: string;
  chromium: string;
}

const args = JSON.parse(process.argv[2] ?? "{}") as Args;
const origin = `http://${args.base}`;
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const TABLET = { width: 1024, height: 768 };
const PHONE = { width: 390, height: 844 };
const hosts = new Set<string>();
const log = (message: string): void => void process.stderr.write(`e2e: ${message}\n`);

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

async function context(browser: Browser): Promise<BrowserContext> {
  const ctx = await browser.newContext({ viewport: TABLET, timezoneId: "Europe/Zurich", locale: "en-GB", serviceWorkers: "allow" });
  ctx.on("request", (request) => void hosts.add(new URL(request.url()).host));
  ctx.on("page", (page) => page.on("websocket", (ws) => void hosts.add(new URL(ws.url()).host)));
  return ctx;
}

async function until(page: Page, what: string, predicate: string, timeoutMs = 20_000): Promise<void> {
  try {
    await page.waitForFunction(predicate, undefined, { timeout: timeoutMs, polling: 25 });
  } catch (error) {
    const state = await page.evaluate("JSON.stringify({ url: location.href, status: window.fieldsyncApp?.store?.status, level: window.fieldsyncApp?.store?.level, notice: window.fieldsyncApp?.store?.notice })").catch(() => "?");
    throw new Error(`${what}: not within ${timeoutMs} ms (${(error as Error).message.split("\n")[0]}); ${String(state)}`);
  }
}

/** Open the app from the sign-in link; wait until the member's level is known and sync is live. */
async function signIn(ctx: BrowserContext, token: string, level: string): Promise<Page> {
  const page = await ctx.newPage();
  page.on("console", (m) => (m.type() === "error" ? log(`page error: ${m.text()}`) : undefined));
  await page.goto(`${origin}/app/#token=${encodeURIComponent(token)}&project=${args.project}`);
  await until(page, `the ${level} is signed in`, `document.querySelector(".app")?.dataset.level === ${JSON.stringify(level)} && window.fieldsyncApp.store.status.connection === "online"`);
  check(!page.url().includes("token="), `the token is removed from the address bar (${page.url()})`);
  return page;
}

async function go(page: Page, fragment: string, ready: string): Promise<void> {
  await page.evaluate(`location.hash = ${JSON.stringify(fragment)}`);
  await page.waitForSelector(ready, { timeout: 10_000 });
}

const synced = (page: Page): Promise<unknown> => page.evaluate("window.fieldsyncApp.store.client.waitSynced(20000)");
const startOf = (page: Page): Promise<string | null> => page.getAttribute("#f-starts_at", "data-value");
const heads = (page: Page): Promise<string[]> => page.evaluate(`window.fieldsyncApp.store.project.heads(${JSON.stringify(args.activity)})`) as Promise<string[]>;

async function shoot(page: Page, name: string, fragment: string | null, ready: string): Promise<string[]> {
  const saved: string[] = [];
  for (const [size, viewport] of [["tablet", TABLET], ["phone", PHONE]] as const) {
    await page.setViewportSize(viewport);
    if (fragment !== null) await go(page, fragment, ready);
    await page.waitForTimeout(150); // layout after the resize (the timeline measures its viewport)
    const file = join(args.screenshots, `${name}-${size}.png`);
    await page.screenshot({ path: file });
    saved.push(file);
  }
  await page.setViewportSize(TABLET);
  return saved;
}

async function main(): Promise<void> {
  mkdirSync(args.screenshots, { recursive: true });
  const browser = await chromium.launch({ executablePath: args.chromium, args: FLAGS, headless: true });
  const screenshots: string[] = [];
  try {
    const [ctxA, ctxB, ctxLead, ctxViewer, ctxNew] = await Promise.all([1, 2, 3, 4, 5].map(() => context(browser)));
    const a = await signIn(ctxA!, args.tokens.a, "specialist");
    const b = await signIn(ctxB!, args.tokens.b, "specialist");
    const lead = await signIn(ctxLead!, args.tokens.lead, "lead");
    const viewer = await signIn(ctxViewer!, args.tokens.viewer, "viewer");
    const activityScreen = `#/activity/${args.activity}`;
    await until(a, "the service worker controls the page", "navigator.serviceWorker.controller !== null");

    // --- A offline: edit, reload from the service worker, the edit is still there --------------
    await go(a, activityScreen, "#f-starts_at:not([disabled])");
    await go(b, activityScreen, "#f-starts_at:not([disabled])");
    const before = await startOf(a);
    await ctxA!.setOffline(true);
    await a.fill("#f-starts_at", "2027-06-07T09:00");
    await until(a, "A's edit waits in the outbox", `window.fieldsyncApp.store.status.pending === 1`);
    await a.reload();
    await a.waitForSelector("#f-starts_at", { timeout: 15_000 });
    const afterReload = await startOf(a);
    check(afterReload === "2027-06-07T07:00:00.000Z", `the offline edit survives the offline reload (${afterReload}, before ${before})`);
    const offlineState = await a.evaluate("window.fieldsyncApp.store.status.connection");
    check(offlineState !== "online", "A is offline after the reload");
    check((await a.textContent("[data-testid=pending]"))?.includes("1 edit waiting"), "the status bar says one edit waits");
    screenshots.push(...(await shoot(a, "specialist-offline", null, "#f-starts_at")));

    // --- B online edits the same field; A comes back; both see the conflict --------------------
    await b.fill("#f-starts_at", "2027-06-07T10:00");
    await synced(b);
    await ctxA!.setOffline(false);
    await synced(a);
    const conflictCard = "[data-kind=concurrent_edit]";
    await go(a, "#/conflicts", conflictCard);
    await go(b, "#/conflicts", conflictCard);
    const candidatesA = await a.$$eval(`${conflictCard} .candidates .value`, (els) => els.map((e) => e.textContent));
    check(candidatesA.length === 2, `A sees both competing values (${JSON.stringify(candidatesA)})`);
    screenshots.push(...(await shoot(a, "specialist-conflicts", "#/conflicts", conflictCard)));

    // --- the lead resolves it on the dashboard ---------------------------------------------------
    await go(lead, "#/conflicts", conflictCard);
    screenshots.push(...(await shoot(lead, "lead-conflicts", "#/conflicts", conflictCard)));
    await lead.click(`${conflictCard} button[aria-label="Keep 7 Jun, 09:00"]`);
    await synced(lead);
    for (const [name, page] of [["A", a], ["B", b], ["lead", lead]] as const) {
      await until(page, `${name} sees the conflict resolved`, `!document.querySelector(${JSON.stringify(conflictCard)})`);
      await go(page, activityScreen, "#f-starts_at");
      await until(page, `${name} shows the chosen start`, `document.querySelector("#f-starts_at").dataset.value === "2027-06-07T07:00:00.000Z"`);
    }
    await Promise.all([synced(a), synced(b), synced(lead)]);
    const allHeads = await Promise.all([heads(a), heads(b), heads(lead)]);
    check(JSON.stringify(allHeads[0]) === JSON.stringify(allHeads[1]) && JSON.stringify(allHeads[1]) === JSON.stringify(allHeads[2]), `all three hold the same document (${JSON.stringify(allHeads)})`);

    // --- a specialist's time change reaches the lead's timeline ----------------------------------
    await go(lead, "#/timeline", `.tl-bar[data-activity-id="${args.activity}"]`);
    const t0 = Date.now();
    await a.fill("#f-starts_at", "2027-06-07T08:30");
    await lead.waitForSelector(`.tl-bar[data-activity-id="${args.activity}"][data-start="2027-06-07T06:30:00.000Z"]`, { timeout: 10_000 });
    const timelineLatencyMs = Date.now() - t0;
    await synced(a);

    // --- the viewer: edit controls disabled, a forced push refused -------------------------------
    await go(viewer, activityScreen, "#f-starts_at");
    const enabled = await viewer.$$eval("main input, main select, main textarea, main button", (els) => els.filter((e) => !(e as HTMLInputElement).disabled).map((e) => e.id || e.textContent));
    check(enabled.length === 0, `every edit control is disabled for a viewer (enabled: ${JSON.stringify(enabled)})`);
    screenshots.push(...(await shoot(viewer, "viewer-activity", activityScreen, "#f-starts_at")));
    await viewer.evaluate(`window.fieldsyncApp.store.project.update("activity", ${JSON.stringify(args.activity)}, { title: "Changed by a viewer" })`);
    await until(viewer, "the server refuses the viewer's push", "window.fieldsyncApp.store.status.rejected === 1");
    const refused = (await viewer.evaluate("window.fieldsyncApp.store.project.rejectedChanges()")) as { code: string; message: string }[];

    // --- every other screen, at both sizes --------------------------------------------------------
    screenshots.push(...(await shoot(a, "specialist-plan", "#/plan", ".card")));
    screenshots.push(...(await shoot(a, "specialist-activity", activityScreen, "#f-starts_at")));
    screenshots.push(...(await shoot(lead, "lead-timeline", "#/timeline", ".tl-bar")));
    screenshots.push(...(await shoot(lead, "lead-summonings", "#/board", "table")));
    screenshots.push(...(await shoot(lead, "lead-health", "#/health", "table")));
    const newPage = await ctxNew!.newPage();
    await newPage.goto(`${origin}/app/`);
    screenshots.push(...(await shoot(newPage, "sign-in", null, "#link")));
    const doubleBooked = await lead.evaluate("location.hash = '#/board'").then(() => lead.$$eval("tr[data-double=true]", (rows) => rows.map((r) => r.getAttribute("data-summoning-id"))));

    console.log(JSON.stringify({
      timelineLatencyMs,
      heads: allHeads[0],
      start: await startOf(a),
      offlineState,
      candidates: candidatesA,
      refused,
      doubleBooked,
      hosts: [...hosts].sort(),
      screenshots,
    }));
  } finally {
    await browser.close();
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
  process.exit(1);
});
