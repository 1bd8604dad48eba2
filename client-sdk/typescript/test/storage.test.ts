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
