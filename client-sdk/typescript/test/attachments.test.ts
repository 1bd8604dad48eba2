// Attachments without a server: hashing, the upload answers' meaning, attaching offline
// (the local copy, the queue and the entity's list written together, kept after a restart),
// and the uploader against a scripted server (Retry-After, offset_mismatch, refusals; the
// real server's paths are tested in tests/typescript/test_attachments.py).
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { attachmentUrl, failureOf, retryAfterMs, RetryLater, Uploader, UploadRefused } from "../src/attachments.js";
import { Backoff } from "../src/backoff.js";
import { FieldsyncClient } from "../src/client.js";
import { ValidationError } from "../src/errors.js";
import { DEFAULT_LIMITS } from "../src/generated/protocol.js";
import { ProjectReplica } from "../src/replica.js";
import { sha256Hex, sha256Plain } from "../src/sha256.js";
import { MemoryStorage } from "../src/store/memory.js";
import { SqliteStorage } from "../src/store/sqlite.js";

test("SHA-256 without WebCrypto matches node:crypto at every padding boundary", async () => {
  for (const size of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 100_003]) {
    const data = new Uint8Array(randomBytes(size));
    const expected = createHash("sha256").update(data).digest("hex");
    assert.equal(sha256Plain(data), expected, `${size} bytes`);
    assert.equal(await sha256Hex(data), expected);
  }
});

test("Retry-After in seconds or as a date; answers that mean later or never", () => {
  assert.equal(retryAfterMs("5"), 5000);
  assert.equal(retryAfterMs(new Date(10_000).toUTCString(), 4_000), 6000);
  assert.equal(retryAfterMs("soon"), null);
  assert.equal(retryAfterMs(null), null);
  const busy = failureOf(503, { code: "server_unavailable", message: "later" }, "5");
  assert.ok(busy instanceof RetryLater && busy.afterMs === 5000);
  for (const status of [401, 408, 429, 500]) assert.ok(failureOf(status, {}, null) instanceof RetryLater, String(status));
  const refused = failureOf(415, { code: "unsupported_type", message: "not a JPEG, PNG, WebP or PDF file" }, null);
  assert.ok(refused instanceof UploadRefused && refused.code === "unsupported_type");
  assert.equal((failureOf(400, {}, null) as UploadRefused).code, "http_400");
});

test("attachment addresses sit beside the sync endpoint", () => {
  assert.equal(attachmentUrl("wss://h.example/x/sync", "p 1", "a1"), "https://h.example/x/projects/p%201/attachments/a1");
  assert.equal(attachmentUrl("ws://127.0.0.1:8000/sync", "p", "a", "small"), "http://127.0.0.1:8000/projects/p/attachments/a/thumbnails/small");
  assert.equal(attachmentUrl("ws://127.0.0.1:8000/sync", "p", "a", "content"), "http://127.0.0.1:8000/projects/p/attachments/a/content");
});

test("attaching offline keeps the bytes, queues the upload and lists the id, and a restart keeps all three", async () => {
  const path = join(mkdtempSync(join(tmpdir(), "fs-ts-")), "store.db");
  const photo = new Uint8Array(randomBytes(5000));
  photo.set([0xff, 0xd8, 0xff, 0xe0]);
  let client = await FieldsyncClient.create({ url: null, token: "t", storage: new SqliteStorage(path) });
  let project = await client.openProject("p1");
  const activity = await project.create("activity", { plan_id: "plan-1", title: "Trench", starts_at: new Date(0), ends_at: new Date(3600_000), status: "planned" });
  const first = await project.attach("activity", activity, photo, { fileName: "trench.jpg", contentType: "image/jpeg" });
  const second = await project.attach("activity", activity, new Blob([photo], { type: "image/jpeg" }));
  assert.deepEqual((await project.get("activity", activity)).attachments, [first, second]);
  assert.equal((await project.attachmentStatus(first)).status, "local");
  assert.equal(project.pendingCount, 3, "each attach is an ordinary edit in the outbox");
  await assert.rejects(project.attach("activity", activity, new Uint8Array(0)), ValidationError);
  await assert.rejects(project.attach("activity", "no-such-activity", photo));
  await client.close();

  client = await FieldsyncClient.create({ url: null, token: "t", storage: new SqliteStorage(path) });
  project = await client.openProject("p1");
  const status = await project.attachmentStatus(second);
  assert.deepEqual(status, { attachmentId: second, status: "local", received: null, size: 5000, code: null, message: null, hasLocalCopy: true });
  const copy = await project.localCopy(first);
  assert.deepEqual(copy?.data, photo);
  assert.equal(copy?.fileName, "trench.jpg");
  assert.equal((await project.localCopy(second))?.contentType, "image/jpeg");
  assert.equal((await project.attachmentStatus("elsewhere")).status, "unknown");
  assert.equal(await project.localCopy("elsewhere"), null);
  const storage = client.storage;
  assert.deepEqual((await storage.uploads("p1", "waiting")).map((u) => u.attachmentId), [first, second]);
  assert.equal(new Set((await storage.uploads("p1")).map((u) => u.sha256)).size, 1, "one local copy for the same bytes");
  await client.close();
});

/** A server that answers from a script: each request gets the next answer. */
function scripted(answers: (() => Response)[]): { fetch: typeof fetch; calls: { method: string; at: number; headers: Record<string, string>; bytes: number }[] } {
  const calls: { method: string; at: number; headers: Record<string, string>; bytes: number }[] = [];
  const fetcher = (async (_url: string, init?: RequestInit) => {
    calls.push({ method: init?.method ?? "GET", at: Date.now(), headers: { ...(init?.headers as Record<string, string>) }, bytes: (init?.body as Uint8Array | undefined)?.length ?? 0 });
    const next = answers.shift();
    if (next === undefined) throw new TypeError("no more answers");
    return next();
  }) as typeof fetch;
  return { fetch: fetcher, calls };
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}): (() => Response) => () => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

test("the uploader waits out Retry-After, continues where the server says, and keeps a final refusal", async () => {
  const storage = new MemoryStorage();
  const replica = await ProjectReplica.open(storage, "p", DEFAULT_LIMITS);
  const data = new Uint8Array(randomBytes(300));
  const sha256 = await sha256Hex(data);
  const row = (attachmentId: string) => ({ projectId: "p", attachmentId, sha256, size: 300, fileName: "a b.jpg", contentType: null, createdAt: attachmentId === "a1" ? 1 : 2, state: "waiting" as const, code: null, message: null });
  await storage.write([{ op: "putBlob", sha256, data }, { op: "addUpload", row: row("a1") }, { op: "addUpload", row: row("a2") }]);
  const server = scripted([
    json(503, { code: "server_unavailable", message: "later" }, { "Retry-After": "1" }),
    json(200, { status: "uploading", received: 100, size: 300 }),
    json(409, { code: "offset_mismatch", message: "no", received: 200 }),
    json(201, { status: "uploaded" }),
    json(404, { code: "project_unavailable", message: "gone" }),
    json(415, { code: "unsupported_type", message: "not a JPEG, PNG, WebP or PDF file" }),
  ]);
  const changed: string[] = [];
  const uploader = new Uploader(
    { storage, replicas: () => new Map([["p", replica]]), currentToken: async () => "tok", uploadChanged: (_p, id) => void changed.push(id) },
    { endpoint: "ws://127.0.0.1:1/sync", fetch: server.fetch, backoff: new Backoff(10, 20), partBytes: 100 },
  );
  uploader.start();
  for (let i = 0; i < 300 && (await storage.uploads("p", "waiting")).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
  await uploader.stop();
  const [busy, status, first, second] = server.calls;
  assert.ok(status!.at - busy!.at >= 990, `Retry-After is waited out (${status!.at - busy!.at} ms)`);
  assert.deepEqual([first!.headers["Upload-Offset"], first!.bytes, second!.headers["Upload-Offset"], second!.bytes], ["100", 100, "200", 100]);
  assert.equal(first!.headers["Upload-Name"], "a%20b.jpg");
  assert.equal(first!.headers.Authorization, "Bearer tok");
  assert.deepEqual((await storage.uploads("p")).map((u) => [u.attachmentId, u.state, u.code]), [["a1", "uploaded", null], ["a2", "refused", "unsupported_type"]]);
  assert.ok(changed.includes("a1") && changed.includes("a2"));
});
