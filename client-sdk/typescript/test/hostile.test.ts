// A fake server that sends hostile frames: every one gives the client a typed error (and a
// new connection), never a crash; decoding hostile frames costs bounded memory.
import assert from "node:assert/strict";
import { test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

import { encode as msgpackEncode } from "@msgpack/msgpack";
import { WebSocketServer, type WebSocket } from "ws";

import { decodeServer, encode } from "../src/codec/codec.js";
import { ProtocolViolation } from "../src/codec/reader.js";
import { FieldsyncClient, FieldsyncError, MemoryStorage, Offline, ProtocolError } from "../src/index.js";
import { nodeWebSocket } from "../src/node.js";
import { DEFAULT_LIMITS, type Limits } from "../src/generated/protocol.js";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

const PROJECT = "p-1";
const WELCOME = encode({ t: "welcome", version: 1, user_id: "u", session_id: "s", limits: { ...DEFAULT_LIMITS } });
const nested = (depth: number, inner: number[]): Uint8Array => new Uint8Array([...new Array<number>(depth).fill(0x91), ...inner]);
const map = (...pairs: [unknown, Uint8Array][]): Uint8Array => {
  const parts = pairs.flatMap(([k, v]) => [msgpackEncode(k), v]);
  const out = new Uint8Array(1 + parts.reduce((n, p) => n + p.length, 0));
  out[0] = 0x80 | pairs.length;
  let at = 1;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
};

type Frame = Uint8Array | string;
const HOSTILE: [string, Frame, string][] = [
  ["malformed msgpack", new Uint8Array([0xc1]), "malformed_frame"],
  ["deep nesting in a field", map(["t", msgpackEncode("synced")], ["project_id", nested(5000, [0xc0])], ["cursor", msgpackEncode(1)]), "invalid_message"],
  ["deep nesting before 't'", map(["x", nested(5000, [0xc0])], ["t", msgpackEncode("synced")]), "malformed_frame"],
  ["an array declaring 4 billion items", map(["t", msgpackEncode("changes")], ["project_id", msgpackEncode(PROJECT)], ["changes", new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff])]), "malformed_frame"],
  ["a string declaring 4 GiB", map(["t", msgpackEncode("synced")], ["project_id", new Uint8Array([0xdb, 0xff, 0xff, 0xff, 0xff, 0x61])]), "malformed_frame"],
  ["a map declaring 4 billion keys", new Uint8Array([0xdf, 0xff, 0xff, 0xff, 0xff]), "invalid_message"],
  ["an unknown message type", msgpackEncode({ t: "frobnicate" }), "unknown_message_type"],
  ["a text frame", "hello", "malformed_frame"],
  ["an extension type", map(["t", msgpackEncode("synced")], ["project_id", msgpackEncode(PROJECT)], ["cursor", new Uint8Array([0xd6, 0xff, 0, 0, 0, 1])]), "malformed_frame"],
];

/** A server that answers every hello with `frames` (after a welcome, if `welcome`). */
async function fakeServer(frames: Frame[], welcome = true): Promise<{ url: string; connections: () => number; close: () => Promise<void> }> {
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise((resolve) => server.on("listening", resolve));
  let connections = 0;
  server.on("connection", (socket: WebSocket) => {
    connections += 1;
    socket.once("message", () => {
      if (welcome) socket.send(WELCOME);
      for (const frame of frames) socket.send(frame, { binary: typeof frame !== "string" });
    });
  });
  const { port } = server.address() as { port: number };
  return {
    url: `ws://127.0.0.1:${port}`,
    connections: () => connections,
    close: () => new Promise((resolve) => { for (const c of server.clients) c.terminate(); server.close(() => resolve()); }),
  };
}

async function until(what: string, predicate: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function client(url: string, limits: Limits = DEFAULT_LIMITS): Promise<FieldsyncClient> {
  const made = await FieldsyncClient.create({ url, token: "t", storage: new MemoryStorage(), webSocket: nodeWebSocket, backoffBaseMs: 5, backoffCapMs: 20, httpSnapshots: false, limits });
  await made.openProject(PROJECT, { timeoutMs: 200 }).catch(() => undefined);
  return made;
}

for (const [name, frame, code] of HOSTILE) {
  for (const welcome of [true, false]) {
    test(`${name} ${welcome ? "after" : "instead of"} welcome: a typed error, then a new connection`, async () => {
      const server = await fakeServer([frame], welcome);
      const c = await client(server.url);
      try {
        await until("a protocol error", () => c.status.lastError instanceof ProtocolError);
        const error = c.status.lastError as ProtocolError;
        assert.equal(error.code, code, error.message);
        await until("a reconnect", () => server.connections() >= 2);
      } finally {
        await c.close();
        await server.close();
      }
    });
  }
}

test("a frame over the client's limit closes the connection (1009) and is reported", async () => {
  const small = { ...DEFAULT_LIMITS, max_frame_bytes: 1000, max_document_bytes: 1000 };
  const server = await fakeServer([encode({ t: "snapshot_chunk", project_id: PROJECT, entities: [{ entity_type: "plan", entity_id: "p", document: new Uint8Array(5000) }] })]);
  const c = await client(server.url, small);
  try {
    await until("an error", () => c.status.lastError !== null);
    assert.ok(c.status.lastError instanceof Offline, String(c.status.lastError));
    assert.match(c.status.lastError.message, /Max payload size exceeded/u);
    await until("a reconnect", () => server.connections() >= 2);
  } finally {
    await c.close();
    await server.close();
  }
});

test("a snapshot document that is not Automerge is refused before it is stored", async () => {
  const frames = [
    encode({ t: "snapshot_begin", project_id: PROJECT, cursor: 3, entity_count: 1 }),
    encode({ t: "snapshot_chunk", project_id: PROJECT, entities: [{ entity_type: "plan", entity_id: "p", document: new Uint8Array([1, 2, 3]) }] }),
    encode({ t: "snapshot_end", project_id: PROJECT, cursor: 3 }),
  ];
  const server = await fakeServer(frames);
  const c = await client(server.url);
  try {
    await until("an error", () => c.status.lastError !== null);
    assert.ok(c.status.lastError instanceof FieldsyncError);
    assert.match(c.status.lastError.message, /not an Automerge document/u);
    assert.equal(c.projects.get(PROJECT)?.cursor, null, "the snapshot was not taken");
    await until("a reconnect", () => server.connections() >= 2);
  } finally {
    await c.close();
    await server.close();
  }
});

test("decoding hostile frames allocates nothing their headers claim", () => {
  // 3 KB of nested array headers that each claim 65,535 items, inside a field.
  const headers = new Uint8Array(3 * 3000).map((_, i) => [0xdc, 0xff, 0xff][i % 3]!);
  const frames = [
    map(["t", msgpackEncode("synced")], ["project_id", headers], ["cursor", msgpackEncode(1)]),
    map(["x", headers], ["t", msgpackEncode("synced")]),
    ...HOSTILE.map(([, frame]) => frame),
  ];
  gc();
  const before = process.memoryUsage();
  for (let round = 0; round < 200; round++) {
    for (const frame of frames) assert.throws(() => decodeServer(frame), ProtocolViolation);
  }
  gc();
  const after = process.memoryUsage();
  assert.ok(after.heapUsed - before.heapUsed < 5_000_000, `heap grew by ${after.heapUsed - before.heapUsed} bytes`);
  assert.ok(after.arrayBuffers - before.arrayBuffers < 1_000_000, `array buffers grew by ${after.arrayBuffers - before.arrayBuffers} bytes`);
});

test("a client fed hostile frames for many connections stays up and its memory stays bounded", async () => {
  const server = await fakeServer(HOSTILE.map(([, frame]) => frame));
  const c = await client(server.url);
  const codes = new Set<string>();
  c.onStatus((status) => {
    if (status.lastError instanceof ProtocolError) codes.add(status.lastError.code);
  });
  try {
    await until("warm up", () => server.connections() >= 10, 10_000);
    gc();
    const before = process.memoryUsage().heapUsed;
    await until("100 hostile connections", () => server.connections() >= 110, 30_000);
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    assert.ok(grown < 10_000_000, `heap grew by ${grown} bytes over 100 connections`);
    // Each connection ends at its first hostile frame, which is always the same one.
    assert.deepEqual([...codes], ["malformed_frame"]);
  } finally {
    await c.close();
    await server.close();
  }
});
