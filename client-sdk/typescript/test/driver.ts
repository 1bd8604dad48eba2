// A TypeScript client driven over stdin/stdout, one JSON command per line, so that the
// Python integration tests (tests/client/test_typescript_sdk.py) can run it side by side
// with a Python SDK client against a real server. Each command gets one JSON line back:
// {"ok": true, "result": ...} or {"ok": false, "error": name, "message": ...}.
// Dates travel as {"$date": ISO string}.
import { createInterface } from "node:readline";

import * as A from "@automerge/automerge";

import { FieldsyncClient, inspect, type Project } from "../src/index.js";
import { nodeWebSocket, SqliteStorage } from "../src/node.js";

type Command = Record<string, unknown> & { cmd: string };

let client: FieldsyncClient | null = null;
/** PATCH requests (attachment parts) this process sent, and their body bytes. */
const sent = { patches: 0, bytes: 0 };

/** `fetch` that counts attachment parts and, after `cutAfter` of them, fails every request
 * as a dropped network would (until the process ends). */
function countingFetch(cutAfter: number | null): typeof fetch {
  return async (input, init) => {
    const isPatch = init?.method === "PATCH";
    if (cutAfter !== null && sent.patches >= cutAfter) throw new TypeError("network cut (test)");
    const response = await fetch(input, init);
    if (isPatch) {
      sent.patches += 1;
      sent.bytes += (init?.body as Uint8Array | undefined)?.length ?? 0;
    }
    return response;
  };
}
let project: Project | null = null;
const remote: string[] = [];

function revive(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(revive);
  if (value !== null && typeof value === "object") {
    const record = value as Record<string, unknown>;
    if (typeof record.$date === "string") return new Date(record.$date);
    return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, revive(v)]));
  }
  return value;
}

/** Raw document values, written as given: {"$str": s} a scalar string, {"$f64": n},
 * {"$counter": n}, {"$date": iso}; a plain string is a Text object. */
function raw(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(raw);
  if (value !== null && typeof value === "object") {
    const r = value as Record<string, unknown>;
    if (typeof r.$str === "string") return new A.ImmutableString(r.$str);
    if (typeof r.$f64 === "number") return new A.Float64(r.$f64);
    if (typeof r.$counter === "number") return new A.Counter(r.$counter);
    if (typeof r.$date === "string") return new Date(r.$date);
    return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, raw(v)]));
  }
  return value;
}

function writeRaw(target: Record<string, unknown>, values: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(values)) {
    const isPlainMap = value !== null && typeof value === "object" && !Array.isArray(value) && !Object.keys(value).some((k) => k.startsWith("$"));
    if (isPlainMap) {
      target[key] = {};
      writeRaw(target[key] as Record<string, unknown>, value as Record<string, unknown>);
    } else target[key] = raw(value);
  }
}

function plain(value: unknown): unknown {
  if (value instanceof Date) return { $date: value.toISOString() };
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [k, plain(v)]));
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  return value;
}

function need<T>(value: T | null, what: string): T {
  if (value === null) throw new Error(`no ${what}: send open first`);
  return value;
}

async function run(c: Command): Promise<unknown> {
  const p = (): Project => need(project, "project");
  const type = c.type as never;
  const id = c.id as string;
  switch (c.cmd) {
    case "open": {
      client = await FieldsyncClient.create({
        url: c.url as string | null,
        token: c.token as string,
        storage: new SqliteStorage(c.path as string),
        webSocket: nodeWebSocket,
        backoffBaseMs: 50,
        backoffCapMs: 250,
        connectTimeoutMs: 2000,
        httpSnapshots: (c.http as boolean | undefined) ?? true,
        fetch: countingFetch((c.cutAfterParts as number | undefined) ?? null),
        ...(c.partBytes === undefined ? {} : { uploadPartBytes: c.partBytes as number }),
      });
      project = await client.openProject(c.project as string, { timeoutMs: 10_000 });
      project.onChange((event) => remote.push(...event.entityIds));
      return { clientId: client.clientId, cursor: project.cursor };
    }
    case "create": return p().create(type, revive(c.values) as never, id ? { entityId: id } : {});
    case "update": return p().update(type, id, revive(c.values) as never);
    case "replaceText": return p().replaceText(type, id, c.field as string, c.text as string);
    case "spliceText": return p().spliceText(type, id, c.field as string, c.index as number, c.remove as number, c.insert as string);
    case "insertItem": return p().insertItem(type, id, c.field as string, c.index as number, revive(c.value));
    case "delete": return p().delete(type, id);
    case "get": return plain(await p().get(type, id));
    case "list": return plain(await p().list(type));
    case "heads": return p().heads(id);
    case "conflicts": return plain(await p().conflicts({ includeResolved: true }));
    case "resolveConflict": return p().resolveConflict(c.conflictId as string, revive(c.value));
    case "rejected": return plain(await p().rejectedChanges());
    case "pause": return need(client, "client").pause();
    case "resume": return need(client, "client").resume();
    case "waitSynced": {
      const status = await need(client, "client").waitSynced((c.timeoutMs as number | undefined) ?? 20_000);
      return { ...status, lastError: status.lastError?.message ?? null };
    }
    case "status": {
      const status = need(client, "client").status;
      return { ...status, lastError: status.lastError?.message ?? null, cursor: p().cursor };
    }
    case "remote": return remote.splice(0);
    case "attach": return p().attach(type, id, Buffer.from(c.data as string, "base64"), c.fileName ? { fileName: c.fileName as string } : {});
    case "attachTimed": {
      const data = Buffer.from(c.data as string, "base64");
      const started = performance.now();
      const attachmentId = await p().attach(type, id, data);
      return { attachmentId, ms: performance.now() - started };
    }
    case "attachmentStatus": return p().attachmentStatus(id);
    case "waitAttachment": {
      const wanted = c.status as string[];
      const deadline = Date.now() + ((c.timeoutMs as number | undefined) ?? 30_000);
      for (;;) {
        const status = await p().attachmentStatus(id);
        if (wanted.includes(status.status)) return status;
        if (Date.now() > deadline) throw new Error(`attachment ${id} stayed ${JSON.stringify(status)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
    case "waitUploadQueue": {
      // Until this device's queue holds nothing waiting (the server's status can arrive over
      // the WebSocket before the answer to the upload's last request).
      const deadline = Date.now() + 30_000;
      while ((await need(client, "client").storage.uploads(p().projectId, "waiting")).length > 0) {
        if (Date.now() > deadline) throw new Error("uploads still waiting");
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return null;
    }
    case "localCopy": {
      const copy = await p().localCopy(id);
      return copy && { data: Buffer.from(copy.data).toString("base64"), fileName: copy.fileName, contentType: copy.contentType };
    }
    case "download": {
      const file = await p().downloadAttachment(id, c.variant as never);
      return { data: Buffer.from(file.data).toString("base64"), contentType: file.contentType };
    }
    case "sent": return { ...sent };
    case "inspectRaw": {
      const doc = A.change(A.init<Record<string, unknown>>(), (d) => writeRaw(d, c.values as Record<string, unknown>));
      return { document: Buffer.from(A.save(doc)).toString("hex"), violations: inspect(c.type as string, doc).violations };
    }
    case "close": {
      await client?.close();
      client = project = null;
      return null;
    }
  }
  throw new Error(`unknown command ${c.cmd}`);
}

const lines = createInterface({ input: process.stdin });
let queue: Promise<void> = Promise.resolve();
lines.on("line", (line) => {
  queue = queue.then(async () => {
    let reply: unknown;
    try {
      reply = { ok: true, result: (await run(JSON.parse(line) as Command)) ?? null };
    } catch (error) {
      const e = error as Error;
      reply = { ok: false, error: e.name, message: e.message, violations: (e as { violations?: unknown }).violations ?? null };
    }
    process.stdout.write(JSON.stringify(reply) + "\n");
  });
});
lines.on("close", () => {
  void queue.then(async () => {
    await client?.close();
    process.exit(0);
  });
});
