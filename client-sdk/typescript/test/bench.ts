// The TypeScript half of bench/typescript_sdk.py (run by hand from there):
//   bootstrap URL TOKEN PROJECT STORE              a fresh client bootstraps into SQLite
//   create URL TOKEN PROJECT STORE COUNT           COUNT entities made online (prints their ids)
//   edit-offline PROJECT STORE IDS_JSON EDITS      EDITS edits with no network
//   resync URL TOKEN PROJECT STORE HEAD            the timed resync; prints heads to check
//   browser-bootstrap URL TOKEN PROJECT ORIGIN     a fresh page bootstraps into IndexedDB
// Each prints one JSON line.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

import { FieldsyncClient, type Project } from "../src/index.js";
import { nodeWebSocket, SqliteStorage } from "../src/node.js";
import { PACKAGE } from "./paths.js";

const [mode, ...args] = process.argv.slice(2);
const START = Date.parse("2026-03-02T08:00:00Z");
const KINDS = ["activity", "activity", "activity", "location", "role"] as const;

function client(url: string | null, token: string, store: string): Promise<FieldsyncClient> {
  return FieldsyncClient.create({ url, token, storage: new SqliteStorage(store), webSocket: nodeWebSocket, backoffBaseMs: 50, backoffCapMs: 500 });
}

function values(kind: string, index: number, plan: string): Record<string, unknown> {
  if (kind === "activity") {
    const day = START + (index % 60) * 86_400_000;
    return {
      plan_id: plan, title: `Core sampling ${index}`, description: "Take three cores at each marked point.",
      tasks: [{ title: "Calibrate drill", done: false }, { title: "Label jars", done: true }],
      starts_at: new Date(day), ends_at: new Date(day + 6 * 3_600_000), status: "planned",
    };
  }
  if (kind === "location") return { name: `Site ${index}`, address: `${index} Quarry Road`, coordinates: { latitude: 45 + index / 100, longitude: 7.5 - index / 100 } };
  return { name: `Role ${index}`, skills: ["drilling", "sampling"] };
}

/** One realistic edit, the same choices as the Python benchmark's lead. */
async function edit(project: Project, kind: string, id: string, n: number): Promise<void> {
  if (kind === "activity") {
    const choice = n % 4;
    if (choice === 0) await project.spliceText("activity", id, "description", 0, 0, `lead ${n}. `);
    else if (choice === 1) await project.update("activity", id, { title: `Survey leg ${n} (lead)` });
    else if (choice === 2) await project.update("activity", id, { ends_at: new Date(START + 70 * 86_400_000 + n * 60_000) });
    else await project.insertItem("activity", id, "tasks", 0, { title: `Task ${n} (lead)`, done: false });
  } else if (kind === "location") await project.update("location", id, { address: `${n} Ridge Road (lead)` });
  else if (kind === "role") await project.update("role", id, { name: `Role ${n} (lead)` });
  else await project.update("plan", id, { name: `Plan ${n} (lead)` });
}

async function main(): Promise<unknown> {
  if (mode === "bootstrap") {
    const [url, token, projectId, store] = args as [string, string, string, string];
    const started = performance.now();
    const c = await client(url, token, store);
    const project = await c.openProject(projectId, { timeoutMs: 60_000 });
    const ms = performance.now() - started;
    const entities = (await c.storage.entityIndex(projectId)).length;
    await c.close();
    return { ms, entities, cursor: project.cursor };
  }
  if (mode === "create") {
    const [url, token, projectId, store, count] = args as [string, string, string, string, string];
    const c = await client(url, token, store);
    const project = await c.openProject(projectId);
    const plan = await project.create("plan", { name: "Spring survey", description: "Field survey" });
    const made: [string, string][] = [["plan", plan]];
    for (let i = 0; i < Number(count) - 1; i++) {
      const kind = KINDS[i % KINDS.length]!;
      made.push([kind, await project.create(kind, values(kind, i, plan) as never)]);
    }
    await c.waitSynced(120_000);
    await c.close();
    return made;
  }
  if (mode === "edit-offline") {
    const [projectId, store, idsFile, edits] = args as [string, string, string, string];
    const made = JSON.parse(readFileSync(idsFile, "utf8")) as [string, string][];
    const c = await client(null, "", store);
    const project = await c.openProject(projectId);
    for (let n = 0; n < Number(edits); n++) {
      const [kind, id] = made[n % made.length]!;
      await edit(project, kind, id, n);
    }
    const pending = project.pendingCount;
    await c.close();
    return { pending };
  }
  if (mode === "resync") {
    const [url, token, projectId, store, head] = args as [string, string, string, string, string];
    const cpu = process.cpuUsage();
    const started = performance.now();
    const c = await client(url, token, store);
    const project = await c.openProject(projectId);
    const opened = performance.now();
    await c.waitSynced(120_000);
    const synced = performance.now();
    while ((project.cursor ?? 0) < Number(head)) await new Promise((r) => setTimeout(r, 1));
    const done = performance.now();
    const used = process.cpuUsage(cpu);
    const heads: Record<string, string[]> = {};
    for (const kind of ["plan", "activity", "location", "role"] as const) {
      for (const id of await project.ids(kind, { includeDeleted: true })) heads[id] = await project.heads(id);
    }
    await c.close();
    return { ms: done - started, openMs: opened - started, syncedMs: synced - opened, headMs: done - synced, cpuMs: (used.user + used.system) / 1000, heads };
  }
  if (mode === "browser-bootstrap") {
    const [url, token, projectId, origin] = args as [string, string, string, string];
    const profile = mkdtempSync(join(tmpdir(), "fs-bench-chromium-"));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: "/usr/bin/chromium",
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      headless: true,
      permissions: ["local-network-access"],
    });
    const bundle = readFileSync(join(PACKAGE, "bundle", "fieldsync.js"));
    await context.route(`${origin}/**`, (route) =>
      route.request().url().endsWith(".js")
        ? route.fulfill({ status: 200, contentType: "text/javascript", body: bundle })
        : route.fulfill({ status: 200, contentType: "text/html", body: '<!doctype html><script src="fieldsync.js"></script>' }),
    );
    try {
      const page = context.pages()[0] ?? (await context.newPage());
      await page.goto(`${origin}/index.html`);
      return await page.evaluate(
        async ([u, t, p]) => {
          const F = (globalThis as never as { Fieldsync: typeof import("../src/browser.js") }).Fieldsync;
          const started = performance.now();
          const storage = await F.IndexedDbStorage.open("bench");
          const c = await F.FieldsyncClient.create({ url: u!, token: t!, storage });
          const project = await c.openProject(p!, { timeoutMs: 120_000 });
          const ms = performance.now() - started;
          const entities = (await storage.entityIndex(p!)).length;
          await c.close();
          return { ms, entities, cursor: project.cursor };
        },
        [url, token, projectId],
      );
    } finally {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    }
  }
  throw new Error(`unknown mode ${mode}`);
}

main().then(
  (result) => {
    console.log(JSON.stringify(result));
    process.exit(0);
  },
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
