// Attaching a photo in the app, in headless Chromium against a real server that
// tests/app/test_attachments.py starts (with a processing worker running):
//   node test-dist/attach-e2e.js '{"base": "127.0.0.1:PORT", "project": "...", "activity": "...", "token": "...", "photo": "/path.jpg", ...}'
// A specialist opens the activity, goes offline, attaches the photo: its local copy shows at
// once; the page is reloaded offline and the photo is still there, waiting; back online it
// uploads by itself and the server's thumbnail replaces the local copy once ready.
// Prints one JSON line with what it saw; exits 1 with the reason on stderr on failure.
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { chromium, type Page } from "playwright-core";

interface Args {
  base: string;
  project: string;
  activity: string;
  token: string;
  photo: string;
  screenshots: string;
  chromium: string;
}

const args = JSON.parse(process.argv[2] ?? "{}") as Args;
const origin = `http://${args.base}`;
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const log = (message: string): void => void process.stderr.write(`attach-e2e: ${message}\n`);

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

async function until(page: Page, what: string, predicate: string, timeoutMs = 30_000): Promise<void> {
  try {
    await page.waitForFunction(predicate, undefined, { timeout: timeoutMs, polling: 25 });
  } catch (error) {
    const state = await page.evaluate("JSON.stringify({ photos: [...document.querySelectorAll('li.photo')].map((e) => e.outerHTML.slice(0, 300)), notice: window.fieldsyncApp?.store?.notice })").catch(() => "?");
    throw new Error(`${what}: not within ${timeoutMs} ms (${(error as Error).message.split("\n")[0]}); ${String(state)}`);
  }
}

const photo = "li.photo";
const statusOf = (page: Page): Promise<string | null> => page.getAttribute(photo, "data-status");
const shownWidth = (kind: string): string => `(document.querySelector('${photo} img[data-kind=${kind}]')?.naturalWidth ?? 0)`;

async function main(): Promise<void> {
  mkdirSync(args.screenshots, { recursive: true });
  const browser = await chromium.launch({ executablePath: args.chromium, args: FLAGS, headless: true });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1024, height: 900 }, serviceWorkers: "allow" });
    const page = await ctx.newPage();
    page.on("console", (m) => (m.type() === "error" ? log(`page error: ${m.text()}`) : undefined));
    await page.goto(`${origin}/app/#token=${encodeURIComponent(args.token)}&project=${args.project}`);
    await until(page, "signed in as a specialist", `document.querySelector(".app")?.dataset.level === "specialist" && window.fieldsyncApp.store.status.connection === "online"`);
    await until(page, "the service worker controls the page", "navigator.serviceWorker.controller !== null");
    await page.evaluate(`location.hash = ${JSON.stringify(`#/activity/${args.activity}`)}`);
    await page.waitForSelector("#attach-photo:not([disabled])", { state: "attached", timeout: 10_000 });

    await ctx.setOffline(true); // HTTP requests fail from here (an open WebSocket may linger)
    const chosenAt = Date.now();
    await page.setInputFiles("#attach-photo", args.photo);
    await until(page, "the local copy shows at once", `${shownWidth("local")} > 0`);
    const localShownMs = Date.now() - chosenAt;
    const offlineStatus = await statusOf(page);
    check(offlineStatus === "local", `offline, the photo waits on the device (${offlineStatus})`);
    const attachmentId = await page.getAttribute(photo, "data-attachment-id");
    check(attachmentId !== null, "the photo is listed");
    const waitingText = await page.textContent(`${photo} .muted`);
    await page.screenshot({ path: join(args.screenshots, "attach-offline.png"), fullPage: true });

    await page.reload();
    await until(page, "after an offline reload the photo is still there, from this device", `${shownWidth("local")} > 0`);
    check((await statusOf(page)) === "local", "still waiting after the reload");

    const seen = new Set<string>();
    const watch = setInterval(() => void statusOf(page).then((s) => s && seen.add(s), () => undefined), 20);
    await ctx.setOffline(false);
    await until(page, "uploaded by itself once online", `["uploaded", "processing", "ready"].includes(document.querySelector("${photo}")?.dataset.status)`);
    await until(page, "the thumbnail replaces the local copy when ready", `${shownWidth("thumbnail")} > 0`, 60_000);
    clearInterval(watch);
    const thumbnailWidth = await page.evaluate(shownWidth("thumbnail"));
    const readyText = await page.textContent(`${photo} .muted`);
    await page.screenshot({ path: join(args.screenshots, "attach-ready.png"), fullPage: true });
    await page.evaluate("window.fieldsyncApp.store.client.waitSynced(20000)");

    console.log(JSON.stringify({ attachmentId, localShownMs, offlineStatus, waitingText, statuses: [...seen], thumbnailWidth, readyText }));
  } finally {
    await browser.close();
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
  process.exit(1);
});
