// The SDK in a real browser: headless Chromium (Debian's, through Playwright) loads a page
// with the bundled SDK (bundle/fieldsync.js), bootstraps a project into IndexedDB, goes
// offline, edits, reloads the page while offline (the edit must still be there), comes back
// online; a second browser context must receive the edit live. Run by
// tests/typescript/test_browser.py, which starts the server and checks the change log:
//   node dist/test/browser.js '{"server": "...", "token": "...", "project": "...", "activity": "..."}'
// Prints one JSON line with what it saw; exits 1 (with the reason on stderr) on failure.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium, type BrowserContext, type Page } from "playwright-core";

import { PACKAGE } from "./paths.js";

interface Args {
  server: string;
  token: string;
  project: string;
  activity: string;
  /** An entity id another project holds: creating it here is refused (wrong_project). */
  taken: string;
  origin: string;
  chromium?: string;
}

const args = JSON.parse(process.argv[2] ?? "{}") as Args;
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const PAGE = `<!doctype html><meta charset="utf-8"><title>fieldsync test page</title>
<script src="fieldsync.js"></script>
<script>
  // What the test drives: one client per page load, on this origin's IndexedDB.
  window.openClient = async (server, token, project) => {
    const storage = await Fieldsync.IndexedDbStorage.open("fieldsync-test");
    window.client = await Fieldsync.FieldsyncClient.create({ url: server, token, storage, backoffBaseMs: 100, backoffCapMs: 500, connectTimeoutMs: 3000 });
    window.project = await window.client.openProject(project, { timeoutMs: 15000 });
    window.seen = [];
    window.project.onChange((event) => window.seen.push(...event.entityIds));
    return { cursor: window.project.cursor, clientId: window.client.clientId };
  };
</script>`;
const BUNDLE = readFileSync(join(PACKAGE, "bundle", "fieldsync.js"));

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

/** A fresh browser profile; the page and the bundle are served by the test itself (so they
 * load while the context is offline too); the WebSocket goes to the real server. */
async function browserContext(): Promise<[BrowserContext, string]> {
  const profile = mkdtempSync(join(tmpdir(), "fs-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium ?? "/usr/bin/chromium",
    args: FLAGS,
    headless: true,
    // The page is served by the test, not from an address Chromium can place, so its
    // Local Network Access checks need the permission to reach the server on 127.0.0.1.
    permissions: ["local-network-access"],
  });
  await context.route(`${args.origin}/**`, (route) => {
    const path = new URL(route.request().url()).pathname;
    if (path.endsWith("fieldsync.js")) return route.fulfill({ status: 200, contentType: "text/javascript", body: BUNDLE });
    return route.fulfill({ status: 200, contentType: "text/html", body: PAGE });
  });
  return [context, profile];
}

async function open(page: Page): Promise<{ cursor: number | null }> {
  await page.goto(`${args.origin}/index.html`);
  return page.evaluate(([s, t, p]) => (window as never as { openClient: (a: string, b: string, c: string) => Promise<{ cursor: number | null }> }).openClient(s!, t!, p!), [args.server, args.token, args.project]);
}

async function until(page: Page, what: string, predicate: string, timeoutMs = 20_000): Promise<void> {
  try {
    await page.waitForFunction(predicate, undefined, { timeout: timeoutMs, polling: 50 });
  } catch (error) {
    throw new Error(`${what}: not within ${timeoutMs} ms (${(error as Error).message.split("\n")[0]})`);
  }
}

const evaluate = <T>(page: Page, code: string): Promise<T> => page.evaluate(code) as Promise<T>;

/** A database left by an SDK of IndexedDB version 1 (no uploads, no blobs) is upgraded in
 * place: its rows stay, and the upload queue and the bytes work. */
const UPGRADE = `(async () => {
  const old = await new Promise((resolve, reject) => {
    const r = indexedDB.open("fieldsync-v1", 1);
    r.onupgradeneeded = () => {
      const db = r.result;
      db.createObjectStore("meta");
      db.createObjectStore("projects", { keyPath: "projectId" });
      db.createObjectStore("entities", { keyPath: ["projectId", "entityId"] }).createIndex("byProject", "projectId");
      db.createObjectStore("outbox", { keyPath: "id", autoIncrement: true }).createIndex("byState", ["projectId", "state"]);
      db.createObjectStore("conflicts", { keyPath: ["projectId", "conflictId"] }).createIndex("byProject", "projectId");
    };
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
  await new Promise((resolve) => {
    const tx = old.transaction("projects", "readwrite");
    tx.objectStore("projects").put({ projectId: "old", cursor: 5, lastSyncedAt: null });
    tx.oncomplete = resolve;
  });
  old.close();
  const s = await Fieldsync.IndexedDbStorage.open("fieldsync-v1");
  const sha256 = "ab".repeat(32);
  const row = { projectId: "old", attachmentId: "a1", sha256, size: 3, fileName: null, contentType: null, createdAt: 1, state: "waiting", code: null, message: null };
  await s.write([{ op: "putBlob", sha256, data: new Uint8Array([1, 2, 3]) }, { op: "addUpload", row }]);
  await s.write([{ op: "putBlob", sha256, data: new Uint8Array([9]) }, { op: "setUpload", projectId: "old", attachmentId: "a1", state: "uploaded", code: null, message: null }]);
  const seen = { cursor: (await s.project("old"))?.cursor, uploads: (await s.uploads("old")).map((u) => u.state), blob: Array.from(await s.blob(sha256)) };
  await s.close();
  return JSON.stringify(seen);
})()`;

async function main(): Promise<void> {
  const [a, profileA] = await browserContext();
  const [b, profileB] = await browserContext();
  try {
    const pageA = a.pages()[0] ?? (await a.newPage());
    const pageB = b.pages()[0] ?? (await b.newPage());
    pageA.on("console", (message) => console.error(`page: ${message.text()}`));
    const opened = await open(pageA);
    const status = await evaluate<unknown>(pageA, "({ ...client.status, lastError: String(client.status.lastError) })");
    check(opened.cursor !== null && opened.cursor > 0, `the first page load bootstraps (cursor ${opened.cursor}, status ${JSON.stringify(status)})`);
    await open(pageB);
    const upgraded = await evaluate<string>(pageB, UPGRADE);
    check(upgraded === JSON.stringify({ cursor: 5, uploads: ["uploaded"], blob: [1, 2, 3] }), `a version 1 database is upgraded (${upgraded})`);
    const before = await evaluate<Record<string, unknown>>(pageA, `project.get("activity", ${JSON.stringify(args.activity)})`);
    check(before.title === "Core sampling", `the snapshot holds the activity (${JSON.stringify(before)})`);
    await evaluate(pageA, "client.waitSynced(15000)");
    await evaluate(pageB, "client.waitSynced(15000)");

    await a.setOffline(true);
    const changed = await evaluate<boolean>(pageA, `project.update("activity", ${JSON.stringify(args.activity)}, { title: "Edited offline", status: "confirmed" })`);
    check(changed, "the offline edit makes a change");
    check((await evaluate<number>(pageA, "client.status.pending")) === 1, "one change waits in the outbox");

    await pageA.reload();
    const reopened = await open(pageA);
    check(reopened.cursor === opened.cursor, "the reloaded page opens the stored project without the network");
    const afterReload = await evaluate<Record<string, unknown>>(pageA, `project.get("activity", ${JSON.stringify(args.activity)})`);
    check(afterReload.title === "Edited offline", `the edit survives the reload from IndexedDB (${String(afterReload.title)})`);
    check((await evaluate<number>(pageA, "client.status.pending")) === 1, "the change still waits after the reload");
    const offlineStatus = await evaluate<string>(pageA, "client.status.connection");

    await a.setOffline(false);
    await evaluate(pageA, "client.waitSynced(20000)").catch(async (error: unknown) => {
      const state = await evaluate<unknown>(pageA, "({ ...client.status, lastError: String(client.status.lastError), cursor: project.cursor })");
      throw new Error(`${(error as Error).message.split("\n")[0]}; status ${JSON.stringify(state)}`);
    });
    await until(pageB, "the second context receives the edit live", `window.seen.includes(${JSON.stringify(args.activity)})`);
    const inB = await evaluate<Record<string, unknown>>(pageB, `project.get("activity", ${JSON.stringify(args.activity)})`);
    check(inB.title === "Edited offline" && inB.status === "confirmed", `the second context shows the edit (${JSON.stringify(inB)})`);
    // A change the server refuses stays visible with its reason, also after a reload.
    await evaluate(pageA, `project.create("plan", { name: "Mine" }, { entityId: ${JSON.stringify(args.taken)} })`);
    await evaluate(pageA, "client.waitSynced(20000)");
    await pageA.reload();
    await open(pageA);
    const rejected = await evaluate<{ entityId: string; code: string; message: string }[]>(pageA, "project.rejectedChanges()");
    check(rejected.length === 1 && rejected[0]!.entityId === args.taken && rejected[0]!.code === "wrong_project" && rejected[0]!.message, `the refused change is kept with its reason (${JSON.stringify(rejected)})`);
    check((await evaluate<number>(pageA, "client.status.rejected")) === 1, "the status counts it");
    await evaluate(pageA, "client.waitSynced(20000)");

    const headsA = await evaluate<string[]>(pageA, `project.heads(${JSON.stringify(args.activity)})`);
    const headsB = await evaluate<string[]>(pageB, `project.heads(${JSON.stringify(args.activity)})`);
    check(JSON.stringify(headsA) === JSON.stringify(headsB), "both contexts hold the same document");
    console.log(JSON.stringify({ heads: headsA, offlineStatus, rejected, cursor: await evaluate<number>(pageA, "project.cursor") }));
  } finally {
    await a.close();
    await b.close();
    rmSync(profileA, { recursive: true, force: true });
    rmSync(profileB, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.stack ?? error.message : String(error));
  process.exit(1);
});
