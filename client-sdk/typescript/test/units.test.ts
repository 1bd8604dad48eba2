// The small pure parts: backoff, push planning, repair, the snapshot body reader.
import assert from "node:assert/strict";
import { test } from "node:test";

import { encode as msgpackEncode } from "@msgpack/msgpack";

import { Backoff } from "../src/backoff.js";
import { encode } from "../src/codec/codec.js";
import { DEFAULT_LIMITS } from "../src/generated/protocol.js";
import { missingHashes, planPush, withAncestors } from "../src/push-plan.js";
import { SnapshotFormatError, SnapshotStream } from "../src/snapshot-stream.js";
import { snapshotUrl, syncUrl } from "../src/sync-loop.js";
import { CLIENT_VERSION, SDK_VERSION } from "../src/version.js";
import { readFileSync } from "node:fs";

test("backoff waits a random time below a ceiling that doubles up to the cap", () => {
  const backoff = new Backoff(100, 1000, () => 0.999);
  const delays = Array.from({ length: 6 }, () => backoff.nextDelay());
  assert.deepEqual(delays.map(Math.round), [100, 200, 400, 799, 999, 999]);
  backoff.reset();
  assert.equal(new Backoff(100, 1000, () => 0).nextDelay(), 0, "full jitter reaches zero");
  assert.throws(() => new Backoff(0, 10));
});

test("a push takes each entity's oldest changes within the limits", () => {
  const rows = [1, 2, 3, 4, 5].map((id) => ({ id, entityType: "plan", entityId: id <= 3 ? "a" : `b${id}`, change: new Uint8Array(100), hash: `h${id}` }));
  assert.deepEqual(planPush(rows, 10, 2, 1 << 20).map((b) => [b.entityId, b.entries.map((e) => e.id)]), [["a", [1, 2]], ["b4", [4]], ["b5", [5]]]);
  assert.deepEqual(planPush(rows, 10, 10, 450).map((b) => [b.entityId, b.entries.map((e) => e.id)]), [["a", [1]]], "a full frame ends the push");
  assert.deepEqual(planPush(rows, 2, 5, 1 << 20).map((b) => b.entityId), ["a", "b4"]);
  assert.equal(planPush(rows, 10, 10, 10).length, 1, "one change goes even over the byte limit");
  const ops = (change: Uint8Array): number => change.length; // any count will do here
  const byOps = planPush(rows, 10, 10, 1 << 20, rows[0]!.change.length + rows[1]!.change.length, ops);
  assert.deepEqual(byOps.map((b) => [b.entityId, b.entries.map((e) => e.id)]), [["a", [1, 2]]], "the op budget ends the push");
  assert.equal(planPush(rows, 10, 10, 1 << 20, 1, ops).length, 1, "one change goes even over the op budget");
});

test("repair finds the missing changes and their ancestors", () => {
  const history = [{ hash: "a", deps: [] }, { hash: "b", deps: ["a"] }, { hash: "c", deps: ["b"] }, { hash: "x", deps: ["a"] }];
  assert.deepEqual(withAncestors(history, new Set(["b"]))?.map((c) => c.hash), ["a", "b"]);
  assert.equal(withAncestors(history, new Set(["zz"])), null);
  const hash = "ab".repeat(32);
  assert.deepEqual(missingHashes({ missing: [hash] }), new Set([hash]));
  assert.equal(missingHashes({ missing: ["nothex"] }), null);
  assert.equal(missingHashes({}), null);
});

test("server URLs become the sync and snapshot endpoints", () => {
  assert.equal(syncUrl("https://sync.example.org"), "wss://sync.example.org/sync");
  assert.equal(syncUrl("http://127.0.0.1:8000/"), "ws://127.0.0.1:8000/sync");
  assert.equal(snapshotUrl("wss://h/x/sync", "p 1"), "https://h/x/projects/p%201/snapshot");
  assert.throws(() => syncUrl("ftp://x"));
});

function body(entities: number): Uint8Array {
  const parts = [
    encode({ t: "snapshot_begin", project_id: "p", cursor: 9, entity_count: entities }),
    ...Array.from({ length: entities }, (_, i) => msgpackEncode({ entity_type: "plan", entity_id: `e${i}`, document: new Uint8Array([i]) })),
    encode({ t: "conflicts", project_id: "p", conflicts: [] }),
    encode({ t: "snapshot_end", project_id: "p", cursor: 9 }),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

test("the snapshot body is read record by record, whatever the piece sizes", () => {
  const bytes = body(5);
  for (const step of [1, 7, bytes.length]) {
    const stream = new SnapshotStream("p");
    const records = [];
    for (let i = 0; i < bytes.length; i += step) records.push(...stream.feed(bytes.subarray(i, i + step)));
    assert.deepEqual(records.map((r) => r.t ?? r.entity_id), ["snapshot_begin", "e0", "e1", "e2", "e3", "e4", "conflicts", "snapshot_end"]);
    assert.equal(stream.finish().cursor, 9);
  }
});

test("a broken snapshot body is refused", () => {
  const bytes = body(2);
  assert.throws(() => new SnapshotStream("p").finish(), SnapshotFormatError);
  const short = new SnapshotStream("p");
  short.feed(bytes.subarray(0, bytes.length - 3));
  assert.throws(() => short.finish(), SnapshotFormatError);
  assert.throws(() => new SnapshotStream("other").feed(bytes), SnapshotFormatError, "another project's snapshot");
  assert.throws(() => new SnapshotStream("p").feed(new Uint8Array([0xc1])), SnapshotFormatError);
  const huge = new SnapshotStream("p", { ...DEFAULT_LIMITS, max_change_bytes: 1, max_changes_per_entity: 1, max_entities_per_batch: 1, max_document_bytes: 10, max_frame_bytes: 1000 });
  huge.feed(encode({ t: "snapshot_begin", project_id: "p", cursor: 1, entity_count: 1 }));
  assert.throws(() => huge.feed(new Uint8Array([0xc6, 0, 1, 0, 0, ...new Uint8Array(5000)])), /longer than/u, "a record longer than any document");
});

test("the SDK names itself in its hello with package.json's version", () => {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
  assert.equal(SDK_VERSION, pkg.version);
  assert.equal(CLIENT_VERSION, `fieldsync-client-typescript/${pkg.version}`);
});
