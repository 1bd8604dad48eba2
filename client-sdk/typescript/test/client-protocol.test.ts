// The client protocol without I/O: server frames in, events and client frames out. The same
// rules as tests/sync/test_client_protocol.py checks for the Python ClientProtocol.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ClientProtocol, OUT_OF_ORDER, type ClientEvent, type PushEntity } from "../src/client-protocol.js";
import { decodeClient, encode } from "../src/codec/codec.js";
import { CLOSE_CODES, DECODER_BOUNDS, DEFAULT_LIMITS, type ChangeRecord, type ClientMessage, type ConflictRecord, type ServerMessage, type SnapshotEntity } from "../src/generated/protocol.js";

const P = "0b6f3c1e-9a2d-4f57-8c1b-2e7d4a9f0c35";
const Q = "5d1c8e2a-3b4f-4e6a-9c7d-8e9f0a1b2c3d";
const WELCOME: ServerMessage = { t: "welcome", version: 1, user_id: "u", session_id: "s", limits: { max_frame_bytes: 4096, max_entities_per_batch: 8, max_ops_per_push: 64 } };

type Protocol = ClientProtocol<PushEntity>;

function sent(protocol: Protocol): ClientMessage[] {
  return protocol.dataToSend().map((frame) => decodeClient(frame));
}

function feed(protocol: Protocol, ...messages: ServerMessage[]): ClientEvent[] {
  for (const message of messages) protocol.receiveFrame(encode(message));
  return protocol.eventsReceived();
}

function opened(projects: [string, number | null][], http = false): Protocol {
  const protocol = new ClientProtocol<PushEntity>(DEFAULT_LIMITS, http);
  protocol.hello("token", "tablet-1", projects.map(([project_id, cursor]) => ({ project_id, cursor })), null);
  feed(protocol, WELCOME);
  protocol.dataToSend();
  return protocol;
}

const record = (seq: number): ChangeRecord => ({ seq, entity_type: "activity", entity_id: `act-${seq % 3}`, change: new Uint8Array(8).fill(seq % 256) });
const changes = (first: number, last: number, project = P): ServerMessage => ({ t: "changes", project_id: project, changes: Array.from({ length: last - first + 1 }, (_, i) => record(first + i)) });
const conflict = (id: string): ConflictRecord => ({ conflict_id: id, status: "open", kind: "concurrent_edit", entity_ids: ["act-1"], fields: ["title"], opened_seq: 3, resolved_seq: null, details: {} });
const entity = (id: string): SnapshotEntity => ({ entity_type: "activity", entity_id: id, document: new Uint8Array([1, 2, 3]) });
const push = (id: string, count = 1): PushEntity => ({ entityType: "activity", entityId: id, changes: Array.from({ length: count }, (_, i) => new Uint8Array(4).fill(i)) });

function assertBroken(protocol: Protocol, events: ClientEvent[], text: string): void {
  const last = events[events.length - 1];
  assert.equal(last?.type, "protocol_failure", JSON.stringify(events));
  assert.ok(last.type === "protocol_failure" && last.code === OUT_OF_ORDER && last.message.includes(text), last.type === "protocol_failure" ? last.message : "");
  assert.deepEqual(protocol.closeRequested, [CLOSE_CODES.PROTOCOL_ERROR, OUT_OF_ORDER]);
  assert.equal(protocol.liveProjects().size, 0);
  assert.deepEqual(feed(protocol, changes(1, 1)), []);
}

test("hello names the projects, up to its limit; the rest subscribe after welcome", () => {
  const ids = Array.from({ length: DECODER_BOUNDS.max_hello_projects + 2 }, (_, i) => `project-${i}`);
  const protocol = new ClientProtocol<PushEntity>();
  protocol.hello("token", "tablet-1", ids.map((project_id) => ({ project_id, cursor: 1 })), null);
  const [hello] = sent(protocol);
  assert.ok(hello?.t === "hello");
  assert.deepEqual(hello.projects.map((p) => p.project_id), ids.slice(0, DECODER_BOUNDS.max_hello_projects));
  const [welcomed] = feed(protocol, WELCOME);
  assert.ok(welcomed?.type === "welcomed");
  assert.equal(welcomed.limits.max_frame_bytes, 4096);
  assert.equal(welcomed.limits.max_changes_per_entity, DEFAULT_LIMITS.max_changes_per_entity);
  assert.deepEqual(sent(protocol), ids.slice(DECODER_BOUNDS.max_hello_projects).map((project_id) => ({ t: "subscribe", project: { project_id, cursor: 1 } })));
});

test("a snapshot bracket stages its conflicts and ends at its cursor", () => {
  const protocol = opened([[P, null]]);
  const events = feed(
    protocol,
    { t: "snapshot_begin", project_id: P, cursor: 41, entity_count: 2 },
    { t: "snapshot_chunk", project_id: P, entities: [entity("a"), entity("b")] },
    { t: "conflicts", project_id: P, conflicts: [conflict("c1")] },
    { t: "snapshot_end", project_id: P, cursor: 41 },
    changes(42, 42),
    { t: "synced", project_id: P, cursor: 42 },
  );
  assert.deepEqual(events.map((e) => e.type), ["snapshot_started", "snapshot_entities", "snapshot_finished", "changes_received", "project_live"]);
  const finished = events[2];
  assert.ok(finished?.type === "snapshot_finished");
  assert.deepEqual(finished.conflicts, [conflict("c1")]);
  assert.deepEqual([...protocol.liveProjects()], [P]);
});

const inSnapshot = (): Protocol => {
  const protocol = opened([[P, null]]);
  feed(protocol, { t: "snapshot_begin", project_id: P, cursor: 5, entity_count: 2 }, { t: "snapshot_chunk", project_id: P, entities: [entity("a")] });
  return protocol;
};

const BROKEN: [string, () => Protocol, ServerMessage, string][] = [
  ["changes inside a snapshot", inSnapshot, changes(1, 1), "in the middle of a snapshot"],
  ["synced inside a snapshot", inSnapshot, { t: "synced", project_id: P, cursor: 5 }, "before its snapshot ended"],
  ["a second snapshot_begin", inSnapshot, { t: "snapshot_begin", project_id: P, cursor: 5, entity_count: 0 }, "snapshot_begin of"],
  ["more entities than announced", inSnapshot, { t: "snapshot_chunk", project_id: P, entities: [entity("b"), entity("c")] }, "announced 2 entities"],
  ["an end after fewer entities", inSnapshot, { t: "snapshot_end", project_id: P, cursor: 5 }, "ended after 1"],
  ["an end at another cursor", inSnapshot, { t: "snapshot_end", project_id: P, cursor: 6 }, "ended at 6"],
  ["a chunk outside a snapshot", () => opened([[P, null]]), { t: "snapshot_chunk", project_id: P, entities: [] }, "outside a snapshot"],
  ["a snapshot for a cursor", () => opened([[P, 4]]), { t: "snapshot_begin", project_id: P, cursor: 9, entity_count: 0 }, "from cursor 4"],
  ["changes before the snapshot", () => opened([[P, null]]), changes(1, 1), "before its snapshot"],
  ["a gap", () => opened([[P, 10]]), changes(12, 12), "expected seq 11, got 12"],
  ["an overlap", () => opened([[P, 10]]), changes(10, 11), "expected seq 11, got 10"],
  ["synced at another cursor", () => opened([[P, 10]]), { t: "synced", project_id: P, cursor: 12 }, "says we hold seq 12"],
  ["synced between conflicts and changes", () => {
    const protocol = opened([[P, 2]]);
    feed(protocol, { t: "conflicts", project_id: P, conflicts: [conflict("c1")] });
    return protocol;
  }, { t: "synced", project_id: P, cursor: 2 }, "between conflicts and their changes"],
  ["a second synced", () => {
    const protocol = opened([[P, 2]]);
    feed(protocol, { t: "synced", project_id: P, cursor: 2 });
    return protocol;
  }, { t: "synced", project_id: P, cursor: 2 }, "a second synced"],
  ["a push result for another project", () => {
    const protocol = opened([]);
    protocol.push(P, [push("a")]);
    return protocol;
  }, { t: "push_result", push_id: 1, project_id: Q, results: [] }, "its result names"],
];

for (const [name, setUp, message, text] of BROKEN) {
  test(`the stream is broken by ${name}`, () => {
    const protocol = setUp();
    assertBroken(protocol, feed(protocol, message), text);
  });
}

test("whatever comes for an unsubscribed project is ignored", () => {
  const protocol = inSnapshot();
  protocol.unsubscribe(P);
  assert.deepEqual(sent(protocol), [{ t: "unsubscribe", project_id: P }]);
  assert.deepEqual(feed(protocol, { t: "snapshot_end", project_id: P, cursor: 9 }, changes(40, 40), changes(1, 1, Q), { t: "synced", project_id: P, cursor: 3 }), []);
  assert.equal(protocol.failure, null);
});

test("a project error ends the stream; cursor_ahead asks for a snapshot in its place", () => {
  const protocol = opened([[P, 3], [Q, 50]]);
  assert.deepEqual(feed(protocol, { t: "project_error", project_id: P, code: "project_unavailable", message: "no" }), [{ type: "project_failed", projectId: P, code: "project_unavailable", message: "no" }]);
  assert.equal(protocol.projectState(P), null);
  assert.deepEqual(feed(protocol, changes(4, 4)), []);
  assert.deepEqual(feed(protocol, { t: "project_error", project_id: Q, code: "cursor_ahead", message: "behind" }), [{ type: "cursor_ahead", projectId: Q, message: "behind" }]);
  assert.deepEqual(sent(protocol), [{ t: "subscribe", project: { project_id: Q, cursor: null } }]);
  assert.equal(feed(protocol, { t: "snapshot_begin", project_id: Q, cursor: 30, entity_count: 0 })[0]?.type, "snapshot_started");
});

test("a project without a cursor fetches over HTTP first, and over the WebSocket if that fails", () => {
  const protocol = opened([[P, null], [Q, null]], true);
  assert.deepEqual(sent(protocol), []);
  assert.equal(protocol.projectState(P), "fetching");
  protocol.snapshotFetched(P, 12);
  protocol.snapshotFetchFailed(Q);
  assert.deepEqual(sent(protocol), [{ t: "subscribe", project: { project_id: P, cursor: 12 } }, { t: "subscribe", project: { project_id: Q, cursor: null } }]);
  feed(protocol, { t: "project_error", project_id: Q, code: "server_unavailable", message: "later" });
  protocol.subscribe(Q, null);
  assert.deepEqual(protocol.eventsReceived(), []);
  assert.deepEqual(sent(protocol), [{ t: "subscribe", project: { project_id: Q, cursor: null } }]);
});

test("pushes come back with what they carried; refusals say whether to retry or split", () => {
  const protocol = opened([]);
  const a = push("a", 2);
  const b = push("b");
  assert.equal(protocol.push(P, [a, b]), 1);
  assert.ok(protocol.pushing(P));
  const rejected = { ok: false as const, entity_id: "b", code: "schema_violation", message: "no", details: {} };
  const [answered] = feed(protocol, { t: "push_result", push_id: 1, project_id: P, results: [rejected, { ok: true, entity_id: "zz", seqs: [99] }, { ok: true, entity_id: "a", seqs: [7, 5] }] });
  assert.ok(answered?.type === "push_answered");
  assert.deepEqual(answered.answers, [[b, rejected], [a, { ok: true, entity_id: "a", seqs: [7, 5] }]]);
  assert.equal(protocol.acknowledgedSeq(P), 7);
  assert.deepEqual(feed(protocol, { t: "push_result", push_id: 1, project_id: P, results: [] }), []);
  protocol.push(P, [a, b]);
  const [split] = feed(protocol, { t: "error", code: "too_many_entities", message: "split", fatal: false, push_id: 2 });
  assert.ok(split?.type === "push_refused" && split.split && !split.retry);
  assert.equal(protocol.pushBudget().maxEntities, 4);
  protocol.push(P, [b]);
  const [retry] = feed(protocol, { t: "error", code: "server_unavailable", message: "db", fatal: false, push_id: 3 });
  assert.ok(retry?.type === "push_refused" && retry.retry && !retry.split);
  assert.deepEqual(feed(protocol, { t: "error", code: "rate_limited", message: "slow", fatal: false, push_id: 99 }), [{ type: "error_received", code: "rate_limited", message: "slow", fatal: false }]);
  assert.throws(() => protocol.push(P, [a, a]), RangeError);
});
