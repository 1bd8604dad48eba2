// Every storage adapter keeps the same contract: atomic writes, outbox ids in order,
// acknowledgements, rejections, conflicts, and what a reopened store still holds.
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import type { ConflictRecord } from "../src/generated/protocol.js";
import { MemoryStorage } from "../src/store/memory.js";
import { SqliteStorage } from "../src/store/sqlite.js";
import type { Storage, WriteOp } from "../src/store/types.js";

const P = "project-1";
const doc = (n: number): Uint8Array => new Uint8Array([0x85, 0x6f, 0x4a, 0x83, n]);
const row = (entityId: string, n: number) => ({ projectId: P, entityType: "plan", entityId, change: doc(n), hash: `h${n}`, createdAt: n });
const conflict = (id: string, status = "open"): ConflictRecord => ({
  conflict_id: id, status, kind: "concurrent_edit", entity_ids: ["e"], fields: ["title"], opened_seq: 1, resolved_seq: null, details: { values: { kept: "a" } },
});

const adapters: [string, () => Storage][] = [
  ["memory", () => new MemoryStorage()],
  ["sqlite", () => new SqliteStorage(join(mkdtempSync(join(tmpdir(), "fs-ts-")), "store.db"))],
];

for (const [name, make] of adapters) {
  test(`${name}: a local edit's document and outbox row are written together`, async () => {
    const store = make();
    const ids = await store.write([
      { op: "putProject", project: { projectId: P, cursor: null, lastSyncedAt: null } },
      { op: "putEntity", entity: { projectId: P, entityId: "e1", entityType: "plan", document: doc(1), deleted: false } },
      { op: "addOutbox", row: row("e1", 1) },
      { op: "addOutbox", row: row("e1", 2) },
    ]);
    assert.equal(ids.length, 2);
    assert.ok(ids[1]! > ids[0]!);
    assert.deepEqual((await store.entity(P, "e1"))?.document, doc(1));
    assert.deepEqual((await store.outbox(P, "pending")).map((r) => r.hash), ["h1", "h2"]);
    assert.deepEqual(await store.entityIndex(P), [{ entityId: "e1", entityType: "plan", deleted: false }]);
    await store.write([
      { op: "acknowledge", ids: [ids[0]!] },
      { op: "reject", ids: [ids[1]!], code: "schema_violation", message: "no", details: { violations: [] }, at: 5 },
    ]);
    assert.deepEqual(await store.outbox(P, "pending"), []);
    const [rejected] = await store.outbox(P, "rejected");
    assert.equal(rejected?.code, "schema_violation");
    assert.deepEqual(rejected?.details, { violations: [] });
    await store.write([{ op: "dismiss", ids: [ids[1]!] }]);
    assert.deepEqual(await store.outbox(P, "rejected"), []);
    await store.close();
  });

  test(`${name}: conflicts are replaced, deleted and cleared`, async () => {
    const store = make();
    await store.write([
      { op: "putConflict", projectId: P, record: conflict("a") },
      { op: "putConflict", projectId: P, record: conflict("b") },
      { op: "putConflict", projectId: P, record: conflict("a", "resolved") },
    ]);
    assert.deepEqual((await store.conflicts(P)).map((c) => [c.conflict_id, c.status]).sort(), [["a", "resolved"], ["b", "open"]]);
    await store.write([{ op: "deleteConflict", projectId: P, conflictId: "a" }]);
    assert.deepEqual((await store.conflicts(P)).map((c) => c.conflict_id), ["b"]);
    await store.write([{ op: "clearConflicts", projectId: P }]);
    assert.deepEqual(await store.conflicts(P), []);
    await store.close();
  });

  test(`${name}: uploads are queued once, change state, and their bytes are kept once per SHA-256`, async () => {
    const store = make();
    const upload = (attachmentId: string, createdAt: number) => ({
      projectId: P, attachmentId, sha256: "ab".repeat(32), size: 3, fileName: "a.jpg", contentType: "image/jpeg",
      createdAt, state: "waiting" as const, code: null, message: null,
    });
    await store.write([
      { op: "putBlob", sha256: "ab".repeat(32), data: new Uint8Array([1, 2, 3]) },
      { op: "addUpload", row: upload("a1", 1) },
      { op: "addUpload", row: upload("a2", 2) },
    ]);
    await store.write([
      { op: "putBlob", sha256: "ab".repeat(32), data: new Uint8Array([9]) }, // already kept: unchanged
      { op: "addUpload", row: { ...upload("a1", 3), fileName: "other.jpg" } }, // already queued: unchanged
      { op: "setUpload", projectId: P, attachmentId: "a2", state: "refused", code: "unsupported_type", message: "no" },
    ]);
    assert.deepEqual(await store.blob("ab".repeat(32)), new Uint8Array([1, 2, 3]));
    assert.equal(await store.blob("cd".repeat(32)), undefined);
    assert.deepEqual((await store.uploads(P)).map((u) => [u.attachmentId, u.state, u.fileName]), [["a1", "waiting", "a.jpg"], ["a2", "refused", "a.jpg"]]);
    assert.deepEqual((await store.uploads(P, "waiting")).map((u) => u.attachmentId), ["a1"]);
    assert.deepEqual(await store.upload(P, "a2"), { ...upload("a2", 2), state: "refused", code: "unsupported_type", message: "no" });
    assert.equal(await store.upload("other-project", "a1"), undefined);
    assert.deepEqual(await store.uploads("other-project"), []);
    await store.close();
  });
}

test("sqlite: a write that fails half way leaves nothing behind, and a reopened store holds what was committed", async () => {
  const path = join(mkdtempSync(join(tmpdir(), "fs-ts-")), "store.db");
  const store = new SqliteStorage(path);
  const clientId = await store.clientId();
  await store.write([{ op: "putProject", project: { projectId: P, cursor: 7, lastSyncedAt: null } }]);
  const broken = [
    { op: "putEntity", entity: { projectId: P, entityId: "e1", entityType: "plan", document: doc(1), deleted: false } },
    { op: "addOutbox", row: { ...row("e1", 1), change: null } }, // NOT NULL: the transaction fails
  ] as unknown as WriteOp[];
  await assert.rejects(store.write(broken));
  assert.equal(await store.entity(P, "e1"), undefined);
  assert.throws(() => new SqliteStorage(path), /one client per file/u, "a second client on the same file is refused");
  await store.close();
  const reopened = new SqliteStorage(path);
  assert.equal(await reopened.clientId(), clientId);
  assert.equal((await reopened.project(P))?.cursor, 7);
  await reopened.close();
});
