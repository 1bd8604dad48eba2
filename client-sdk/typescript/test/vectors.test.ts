// The TypeScript codec against the conformance vectors the server generates
// (contract/vectors): the same files the Python codec is tested with.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { decodeClient, decodeServer, encode, ProtocolViolation } from "../src/codec/codec.js";
import { DEFAULT_LIMITS, type Limits } from "../src/generated/protocol.js";
import { CONTRACT } from "./paths.js";

const VECTORS = join(CONTRACT, "vectors");
const index = JSON.parse(readFileSync(join(VECTORS, "index.json"), "utf8")) as { vectors: { path: string; valid: boolean }[] };

interface Spec {
  direction: "client_to_server" | "server_to_client";
  valid: boolean;
  canonical?: boolean;
  limits?: Partial<Limits>;
  message?: unknown;
  error?: { code: string; push_id: number | null };
}

function load(path: string): [Spec, Uint8Array] {
  const spec = JSON.parse(readFileSync(join(VECTORS, `${path}.json`), "utf8")) as Spec;
  return [spec, new Uint8Array(readFileSync(join(VECTORS, `${path}.msgpack`)))];
}

/** A decoded value as the vectors' JSON shows it: bin as {"$bin": hex}. */
function toJson(value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bin: Buffer.from(value).toString("hex") };
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  return value;
}

function decode(spec: Spec, frame: Uint8Array): unknown {
  const limits = { ...DEFAULT_LIMITS, ...spec.limits };
  return spec.direction === "client_to_server" ? decodeClient(frame, limits) : decodeServer(frame, limits);
}

test("there are vectors of both kinds in both directions", () => {
  const kinds = new Set(index.vectors.map((v) => `${v.path.split("/")[0]}/${v.valid}`));
  assert.equal(kinds.size, 4);
});

for (const { path, valid } of index.vectors) {
  test(`vector ${path}`, () => {
    const [spec, frame] = load(path);
    if (valid) {
      const message = decode(spec, frame);
      assert.deepStrictEqual(toJson(message), spec.message);
      if (spec.canonical) assert.deepStrictEqual(encode(message as never), frame, "the encoder writes the canonical frame");
    } else {
      assert.throws(
        () => decode(spec, frame),
        (error: unknown) => {
          assert.ok(error instanceof ProtocolViolation, `a ProtocolViolation, not ${String(error)}`);
          assert.equal(error.code, spec.error!.code, error.message);
          assert.equal(error.pushId, spec.error!.push_id);
          return true;
        },
      );
    }
  });
}
