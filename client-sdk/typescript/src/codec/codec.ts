/**
 * Messages to frames and back. The message records, their field order, defaults and types
 * come from the contract (`src/generated/protocol.ts`, generated from the server's
 * `sync/messages.py`); this module adds only the decoder's rules that are not types (string
 * bounds, the few per-message checks) and follows `sync/codec.py` step for step. The
 * conformance vectors in `contract/vectors` are its tests.
 *
 * `decodeServer` / `decodeClient` throw `ProtocolViolation` and nothing else, whatever the
 * bytes.
 */
import { encode as msgpackEncode } from "@msgpack/msgpack";

import {
  CLIENT_FIELDS,
  CONFLICT_STATUSES,
  DECODER_BOUNDS,
  DEFAULT_LIMITS,
  RECORD_FIELDS,
  SERVER_FIELDS,
  type ClientMessage,
  type Limits,
  type Message,
  type ServerMessage,
} from "../generated/protocol.js";
import { FieldError, ProtocolViolation, Reader, malformed } from "./reader.js";

export { ProtocolViolation } from "./reader.js";

type Shapes = Record<string, readonly FieldSpec[]>;
type FieldSpec = { readonly name: string; readonly default?: unknown };
type Parse = (r: Reader, limits: Limits) => unknown;

const B = DECODER_BOUNDS;

export function maxServerFrameBytes(limits: Limits = DEFAULT_LIMITS): number {
  return limits.max_frame_bytes + limits.max_document_bytes;
}

// --- encoding -----------------------------------------------------------------------------

// Records nested in messages, by the field that holds them: the encoder writes their keys in
// the contract's order, "t" first, as the server's encoder does.
const NESTED: Record<string, string> = {
  projects: "ProjectCursor",
  project: "ProjectCursor",
  entities: "", // EntityPush or SnapshotEntity: chosen by the message type below
  changes: "ChangeRecord",
  conflicts: "ConflictRecord",
  results: "EntityResult",
};

function ordered(record: Record<string, unknown>, fields: readonly FieldSpec[], head: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...head };
  for (const field of fields) {
    const value = record[field.name];
    out[field.name] = value === undefined ? (field.default ?? null) : value;
  }
  return out;
}

function nestedRecord(messageType: string, fieldName: string): string | undefined {
  if (fieldName === "entities") return messageType === "push" ? "EntityPush" : "SnapshotEntity";
  return NESTED[fieldName];
}

function orderRecord(name: string, value: Record<string, unknown>): Record<string, unknown> {
  if (name === "EntityResult") {
    const ok = value.ok === true;
    return ordered(value, RECORD_FIELDS[ok ? "EntityAccepted" : "EntityRejected"], { ok });
  }
  return ordered(value, RECORD_FIELDS[name as keyof typeof RECORD_FIELDS], {});
}

/** One frame: a msgpack map with "t" first, then the fields in the contract's order. */
export function encode(message: Message): Uint8Array {
  const fields = (CLIENT_FIELDS as Shapes)[message.t] ?? (SERVER_FIELDS as Shapes)[message.t];
  if (fields === undefined) throw new TypeError(`unknown message type ${message.t}`);
  const plain = message as unknown as Record<string, unknown>;
  const out = ordered(plain, fields, { t: message.t });
  for (const field of fields) {
    const record = nestedRecord(message.t, field.name);
    const value = out[field.name];
    if (record === undefined || value === null || typeof value !== "object") continue;
    out[field.name] = Array.isArray(value)
      ? value.map((item: Record<string, unknown>) => orderRecord(record, item))
      : orderRecord(record, value as Record<string, unknown>);
  }
  return msgpackEncode(out, { ignoreUndefined: false, forceIntegerToFloat: false, sortKeys: false });
}

// --- decoding: the rules of each field ------------------------------------------------------

const str = (maxChars?: number): Parse => (r) => r.string(maxChars);
const uint: Parse = (r) => r.uint();
const optionalUint: Parse = (r) => r.optionalUint();
const optionalStr = (maxChars?: number): Parse => (r) => r.optionalString(maxChars);
const boolean: Parse = (r) => r.boolean();
const blob: Parse = (r) => r.blob();
const text = str();
const projectId = str(B.max_project_id_chars);
const entityType = str(B.max_entity_type_chars);
const entityId = str(B.max_entity_id_chars);
const code = str(B.max_code_chars);

function array(item: Parse, maxItems?: number): Parse {
  return (r, limits) => {
    const items: unknown[] = [];
    const count = r.open("array", maxItems);
    for (let index = 0; index < count; index++) {
      try {
        items.push(item(r, limits));
      } catch (error) {
        throw error instanceof FieldError ? error.at(`[${index}]`) : error;
      }
    }
    return items;
  };
}

interface Shape {
  readonly fields: readonly FieldSpec[];
  readonly parse: Record<string, Parse>;
  readonly build?: (values: Record<string, unknown>) => unknown;
  readonly required?: readonly string[];
}

function shape(fields: readonly FieldSpec[], parse: Record<string, Parse>, build?: Shape["build"]): Shape {
  const names = fields.map((f) => f.name).join(",");
  if (names !== Object.keys(parse).join(",")) throw new Error(`codec rules (${Object.keys(parse)}) do not match the contract (${names})`);
  return build === undefined ? { fields, parse } : { fields, parse, build };
}

function readFields(r: Reader, limits: Limits, count: number, s: Shape, typeSeen: boolean | null): Record<string, unknown> {
  const values: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  const seen = new Set<string>();
  for (let i = 0; i < count; i++) {
    const key = r.key();
    if (typeSeen !== null && key === "t") {
      if (typeSeen) throw new FieldError("key 't' appears twice");
      typeSeen = true;
      r.skip();
      continue;
    }
    if (seen.has(key)) throw new FieldError(`field '${key}' appears twice`);
    const parse = Object.hasOwn(s.parse, key) ? s.parse[key] : undefined;
    if (parse === undefined) {
      throw new FieldError(`unexpected field '${key.slice(0, 64)}' (fields: ${s.fields.map((f) => f.name).join(", ")})`);
    }
    try {
      values[key] = parse(r, limits);
    } catch (error) {
      throw error instanceof FieldError ? error.at(`.${key}`) : error;
    }
    seen.add(key);
  }
  const required = s.required ?? s.fields.filter((f) => !("default" in f)).map((f) => f.name);
  for (const field of s.fields) {
    if (seen.has(field.name)) continue;
    if (required.includes(field.name)) throw new FieldError(`missing field '${field.name}'`);
    if ("default" in field) values[field.name] = structuredClone(field.default);
  }
  return values;
}

function ordering(s: Shape, values: Record<string, unknown>, head: Record<string, unknown> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = { ...head };
  for (const field of s.fields) if (field.name in values) out[field.name] = values[field.name];
  return out;
}

function record(s: Shape): Parse {
  return (r, limits) => {
    const values = readFields(r, limits, r.open("map"), s, null);
    return s.build ? s.build(values) : ordering(s, values);
  };
}

const projectCursor = record(shape(RECORD_FIELDS.ProjectCursor, { project_id: projectId, cursor: optionalUint }));

const helloProjects: Parse = (r, limits) => {
  const projects = array(projectCursor, B.max_hello_projects)(r, limits) as { project_id: string }[];
  const first = new Map<string, number>();
  projects.forEach((project, index) => {
    const earlier = first.get(project.project_id);
    if (earlier !== undefined) throw new FieldError(`the same project as [${earlier}]`, ".project_id", `[${index}]`);
    first.set(project.project_id, index);
  });
  return projects;
};

const TOO_MANY = Symbol("too many entities");
class TooManyEntities extends Error {
  constructor(readonly pushId: number, readonly count: number) {
    super("too many entities");
  }
}

const entityPushes = array(record(shape(RECORD_FIELDS.EntityPush, { entity_type: entityType, entity_id: entityId, changes: array(blob) })));
const pushEntities: Parse = (r, limits) => {
  const count = r.count("array");
  if (count > limits.max_entities_per_batch) {
    r.skip(); // the push id may come later in the map; it goes into the error
    return { [TOO_MANY]: count };
  }
  return entityPushes(r, limits);
};

const limitsMap: Parse = (r) => {
  const limits: Record<string, number> = {};
  const count = r.open("map", B.max_limits_keys);
  for (let i = 0; i < count; i++) {
    const key = r.key();
    if (Object.hasOwn(limits, key)) throw new FieldError(`key '${key}' appears twice`);
    try {
      limits[key] = r.uint();
    } catch (error) {
      throw error instanceof FieldError ? error.at(`.${key}`) : error;
    }
  }
  return limits;
};

const details: Parse = (r) => {
  const kind = r.kind();
  if (kind !== "map") throw new FieldError(`expected map, got ${kind}`);
  return r.anyValue(B.max_details_depth);
};

const conflictStatus: Parse = (r) => {
  const status = r.string(B.max_code_chars);
  if (!(CONFLICT_STATUSES as readonly string[]).includes(status)) throw new FieldError(`unknown conflict status '${status}'`);
  return status;
};

const ACCEPTED = RECORD_FIELDS.EntityAccepted.map((f) => f.name) as readonly string[];
const REJECTED = RECORD_FIELDS.EntityRejected.map((f) => f.name) as readonly string[];
// One record tagged by "ok"; no field has a default until the tag says which record it is.
const RESULT_FIELDS: readonly FieldSpec[] = ["ok", "entity_id", "seqs", "code", "message", "details"].map((name) => ({ name }));

const result: Shape = {
  fields: RESULT_FIELDS,
  parse: { ok: boolean, entity_id: entityId, seqs: array(uint), code, message: text, details },
  required: ["ok"],
  build(values) {
    const ok = values.ok === true;
    const allowed = ok ? ACCEPTED : REJECTED;
    const required = ok ? ACCEPTED : REJECTED.filter((n) => n !== "details");
    for (const name of Object.keys(values)) {
      if (name !== "ok" && !allowed.includes(name)) throw new FieldError(`unexpected field '${name}' in a result with ok=${ok ? "True" : "False"}`);
    }
    for (const name of [...required].sort()) {
      if (!(name in values)) throw new FieldError(`missing field '${name}' in a result with ok=${ok ? "True" : "False"}`);
    }
    const fields = ok ? RECORD_FIELDS.EntityAccepted : RECORD_FIELDS.EntityRejected;
    const out: Record<string, unknown> = { ok };
    for (const field of fields) out[field.name] = field.name in values ? values[field.name] : structuredClone((field as FieldSpec).default);
    return out;
  },
};

const CLIENT_SHAPES: Record<string, Shape> = {
  hello: shape(CLIENT_FIELDS.hello, {
    versions: array(uint, B.max_hello_versions),
    token: str(B.max_token_chars),
    client_id: str(B.max_client_id_chars),
    projects: helloProjects,
    outbox_age_ms: optionalUint,
    client_version: optionalStr(B.max_client_version_chars),
  }),
  subscribe: shape(CLIENT_FIELDS.subscribe, { project: projectCursor }),
  unsubscribe: shape(CLIENT_FIELDS.unsubscribe, { project_id: projectId }),
  push: shape(CLIENT_FIELDS.push, { push_id: uint, project_id: projectId, entities: pushEntities }, (values) => {
    const entities = values.entities as Record<symbol, number>;
    if (typeof entities === "object" && entities !== null && TOO_MANY in entities) {
      throw new TooManyEntities(values.push_id as number, entities[TOO_MANY]!);
    }
    return values;
  }),
};

const SERVER_SHAPES: Record<string, Shape> = {
  welcome: shape(SERVER_FIELDS.welcome, { version: uint, user_id: str(B.max_user_id_chars), session_id: str(B.max_user_id_chars), limits: limitsMap }),
  project_error: shape(SERVER_FIELDS.project_error, { project_id: projectId, code, message: text }),
  snapshot_begin: shape(SERVER_FIELDS.snapshot_begin, { project_id: projectId, cursor: uint, entity_count: uint }),
  snapshot_chunk: shape(SERVER_FIELDS.snapshot_chunk, {
    project_id: projectId,
    entities: array(record(shape(RECORD_FIELDS.SnapshotEntity, { entity_type: entityType, entity_id: entityId, document: blob }))),
  }),
  snapshot_end: shape(SERVER_FIELDS.snapshot_end, { project_id: projectId, cursor: uint }),
  changes: shape(SERVER_FIELDS.changes, {
    project_id: projectId,
    changes: array(record(shape(RECORD_FIELDS.ChangeRecord, { seq: uint, entity_type: entityType, entity_id: entityId, change: blob }))),
  }),
  conflicts: shape(SERVER_FIELDS.conflicts, {
    project_id: projectId,
    conflicts: array(
      record(
        shape(RECORD_FIELDS.ConflictRecord, {
          conflict_id: str(B.max_conflict_id_chars),
          status: conflictStatus,
          kind: code,
          entity_ids: array(entityId),
          fields: array(str(B.max_field_name_chars)),
          opened_seq: uint,
          resolved_seq: optionalUint,
          details,
        }),
      ),
    ),
  }),
  synced: shape(SERVER_FIELDS.synced, { project_id: projectId, cursor: uint }),
  push_result: shape(SERVER_FIELDS.push_result, { push_id: uint, project_id: projectId, results: array(record(result)) }),
  error: shape(SERVER_FIELDS.error, { code, message: text, fatal: boolean, push_id: optionalUint }),
  status: shape(SERVER_FIELDS.status, { state: code, code, message: text }),
};

// --- decoding: the entry points ---------------------------------------------------------------

function messageType(r: Reader, shapes: Record<string, Shape>, sender: string): [string, number, number] {
  const kind = r.kind();
  if (kind !== "map") throw malformed(`a frame must hold one msgpack map, got ${kind}`);
  const count = r.open("map");
  if (count > B.max_message_keys) throw new ProtocolViolation("invalid_message", `a message has at most ${B.max_message_keys} keys`);
  for (let index = 0; index < count; index++) {
    if (r.key() !== "t") {
      r.skip();
      continue;
    }
    const typeKind = r.kind();
    if (typeKind !== "str") throw new ProtocolViolation("invalid_message", `'t' must be a string naming the type, got ${typeKind}`);
    const name = r.string();
    if (!Object.hasOwn(shapes, name)) {
      throw new ProtocolViolation("unknown_message_type", `unknown message type '${name.slice(0, 64)}'; a ${sender} sends ${Object.keys(shapes).join(", ")}`);
    }
    return [name, index, count];
  }
  throw new ProtocolViolation("invalid_message", "the map has no 't' key naming its type");
}

function readMessage(r: Reader, limits: Limits, shapes: Record<string, Shape>, sender: string): unknown {
  let name = "message";
  let violation: ProtocolViolation;
  try {
    const [type, typeIndex, count] = messageType(r, shapes, sender);
    name = type;
    const s = shapes[type]!;
    let rest = r;
    let values: Record<string, unknown>;
    if (typeIndex === 0) {
      values = readFields(r, limits, count - 1, s, true);
    } else {
      rest = r.restart();
      values = readFields(rest, limits, rest.open("map"), s, false);
    }
    const built = (s.build ? s.build(values) : values) as Record<string, unknown>;
    if (rest.trailing()) throw malformed(`${rest.trailing()} bytes follow the message`);
    return ordering(s, built, { t: type });
  } catch (error) {
    if (error instanceof ProtocolViolation) violation = error;
    else if (error instanceof FieldError) violation = new ProtocolViolation("invalid_message", `${error.where(name)}: ${error.message}`);
    else if (error instanceof TooManyEntities) {
      violation = new ProtocolViolation(
        "too_many_entities",
        `push.entities: at most ${limits.max_entities_per_batch} entities per push, got ${error.count}`,
        error.pushId,
      );
    } else if (error instanceof RangeError) violation = malformed("values are nested too deeply");
    else violation = malformed(`not valid msgpack: ${String(error)}`);
  }
  if (name === "push" && violation.pushId === null) violation.pushId = readablePushId(r.restart());
  throw violation;
}

/** The push id of a push that is broken elsewhere, if it can be read. */
function readablePushId(r: Reader): number | null {
  try {
    const count = r.open("map");
    for (let i = 0; i < count; i++) {
      if (r.key() === "push_id") return r.uint();
      r.skip();
    }
  } catch {
    // unreadable: no id
  }
  return null;
}

function decode(frame: Uint8Array | string, limits: Limits, maxBytes: number, shapes: Record<string, Shape>, sender: string): unknown {
  if (typeof frame === "string") throw malformed("text frames are not part of the protocol: send binary frames");
  if (frame.length > maxBytes) throw new ProtocolViolation("frame_too_large", `the frame has ${frame.length} bytes; at most ${maxBytes} are allowed`);
  if (frame.length === 0) throw malformed("the frame is empty");
  return readMessage(new Reader(frame), limits, shapes, sender);
}

export function decodeServer(frame: Uint8Array | string, limits: Limits = DEFAULT_LIMITS): ServerMessage {
  return decode(frame, limits, maxServerFrameBytes(limits), SERVER_SHAPES, "server") as ServerMessage;
}

export function decodeClient(frame: Uint8Array | string, limits: Limits = DEFAULT_LIMITS): ClientMessage {
  return decode(frame, limits, limits.max_frame_bytes, CLIENT_SHAPES, "client") as ClientMessage;
}
