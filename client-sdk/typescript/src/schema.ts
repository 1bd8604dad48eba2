/**
 * Reading an entity's Automerge document against its schema: the same rules, and the same
 * violation wording, as the server's `model/validation.py`. The schema is the contract's
 * `entities.schema.json` (generated into `ENTITY_SCHEMA`), never a copy written by hand.
 *
 * A local edit is validated here before it is stored, so an edit the server would refuse
 * with `schema_violation` is refused at once with the same fields, `expected` and `got`.
 */
import * as A from "@automerge/automerge";

import { ENTITY_SCHEMA, type EntityType } from "./generated/entities.js";

export interface SchemaViolation {
  readonly entityType: string;
  /** A path such as `title`, `tasks[2].title` or `coordinates.latitude`. */
  readonly field: string;
  readonly expected: string;
  readonly got: string;
}

/** One field of the schema as the SDK reads it. */
export interface FieldSpec {
  readonly name: string;
  readonly kind: string;
  readonly automerge: string;
  readonly expected: string;
  readonly required: boolean;
  readonly enum?: readonly string[];
  readonly pattern?: RegExp;
  readonly maxLength?: number;
  readonly minimum?: number;
  readonly maximum?: number;
  readonly maxItems?: number;
  readonly item?: FieldSpec;
  readonly fields?: readonly FieldSpec[];
  readonly timestampRange?: readonly [number, number];
}

export interface EntitySpec {
  readonly type: string;
  readonly fields: readonly FieldSpec[];
  readonly requireOneOf: readonly string[];
}

type Json = { [key: string]: unknown };

function fieldSpec(name: string, raw: Json, required: boolean): FieldSpec {
  const schema = (Array.isArray(raw.anyOf) ? raw.anyOf[0] : raw) as Json;
  const note = schema["x-fieldsync"] as Json;
  const spec: { -readonly [K in keyof FieldSpec]: FieldSpec[K] } = {
    name,
    kind: note.kind as string,
    automerge: note.automerge as string,
    expected: note.expected as string,
    required,
  };
  if (Array.isArray(schema.enum)) spec.enum = schema.enum as string[];
  if (typeof schema.pattern === "string" && note.kind === "ref") spec.pattern = new RegExp(schema.pattern, "u");
  if (typeof schema.maxLength === "number") spec.maxLength = schema.maxLength;
  if (typeof schema.minimum === "number") spec.minimum = schema.minimum;
  if (typeof schema.maximum === "number") spec.maximum = schema.maximum;
  if (typeof schema.maxItems === "number") spec.maxItems = schema.maxItems;
  if (note.kind === "timestamp") spec.timestampRange = [Date.parse(note.minimum as string), Date.parse(note.maximum as string)];
  if (schema.items) spec.item = fieldSpec(name, schema.items as Json, true);
  if (schema.properties) spec.fields = objectFields(schema);
  return spec;
}

function objectFields(schema: Json): FieldSpec[] {
  const required = schema.required as string[];
  return Object.entries(schema.properties as Record<string, Json>).map(([name, raw]) => fieldSpec(name, raw, required.includes(name)));
}

export const SCHEMAS: ReadonlyMap<string, EntitySpec> = new Map(
  Object.entries(ENTITY_SCHEMA.$defs as unknown as Record<string, Json>).map(([type, def]) => [
    type,
    { type, fields: objectFields(def), requireOneOf: ((def["x-fieldsync"] as Json | undefined)?.require_one_of as string[] | undefined) ?? [] },
  ]),
);

export const ENTITY_TYPES = [...SCHEMAS.keys()] as EntityType[];
export const ENTITY_ID_PATTERN = new RegExp(ENTITY_SCHEMA["x-fieldsync"].entity_id_pattern, "u");
export const MAX_VIOLATIONS = ENTITY_SCHEMA["x-fieldsync"].max_violations;

export function entitySpec(entityType: string): EntitySpec | undefined {
  return SCHEMAS.get(entityType);
}

export function isValidEntityId(value: unknown): value is string {
  return typeof value === "string" && ENTITY_ID_PATTERN.test(value);
}

// --- reading ------------------------------------------------------------------------------

type Path = readonly (string | number)[];
const SKIP = Symbol("skip");
const SHOWN_CHARS = 40;
class Full extends Error {}

/** Python's `repr` of a string, which the server's violations quote. */
export function pyRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    if (ch === "\\" || ch === quote) out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || code === 0x7f) out += "\\x" + code.toString(16).padStart(2, "0");
    else out += ch;
  }
  return out + quote;
}

function short(text: string): string {
  const chars = [...text];
  if (chars.length <= SHOWN_CHARS) return pyRepr(text);
  return `${pyRepr(chars.slice(0, SHOWN_CHARS).join(""))}... (${chars.length} characters)`;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "string") return "text";
  if (A.isImmutableString(value)) return `str ${short(value.toString())}`;
  if (Array.isArray(value)) return "list";
  if (value instanceof Date) return "timestamp";
  if (A.isCounter(value)) return "counter";
  if (value instanceof Uint8Array) return "bytes";
  if (typeof value === "boolean") return `boolean ${value}`;
  if (typeof value === "number") return Number.isInteger(value) ? `int ${value}` : `f64 ${value}`;
  if (typeof value === "object") return "map";
  return "unknown";
}

function pathText(path: Path): string {
  let out = "";
  for (const part of path) out += typeof part === "number" ? `[${part}]` : out ? `.${part}` : part;
  return out || "(document)";
}

function comparePaths(a: Path, b: Path): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x === y) continue;
    return x < y ? -1 : 1;
  }
  return a.length - b.length;
}

function rangeText(field: FieldSpec): string {
  const { minimum: low, maximum: high } = field;
  if (low !== undefined && high !== undefined) return `${field.expected} from ${low} to ${high}`;
  if (low !== undefined) return `${field.expected} of at least ${low}`;
  return `${field.expected} of at most ${high}`;
}

const tooLong = (field: FieldSpec): string => `${field.expected} of at most ${field.maxLength} characters`;

class DocReader {
  readonly found: [Path, string, string][] = [];
  readonly present = new Set<string>();

  report(path: Path, expected: string, got: string): void {
    this.found.push([path, expected, got]);
    if (this.found.length >= MAX_VIOLATIONS) throw new Full();
  }

  readMap(obj: Record<string, unknown>, fields: readonly FieldSpec[], path: Path): Record<string, unknown> {
    const byName = new Map(fields.map((f) => [f.name, f]));
    const names = [...new Set([...byName.keys(), ...Object.keys(obj)])].sort();
    const out: Record<string, unknown> = {};
    for (const name of names) {
      const field = byName.get(name);
      if (field === undefined) {
        const clipped = name.length <= SHOWN_CHARS ? name : `${name.slice(0, SHOWN_CHARS)}...`;
        this.report([...path, clipped], "absent (not in the schema)", "unexpected field");
        continue;
      }
      const value = this.readSlot(obj[name], field, [...path, name], field.required);
      if (value !== SKIP) out[name] = value;
    }
    return out;
  }

  readSlot(raw: unknown, field: FieldSpec, path: Path, required: boolean): unknown {
    if (raw === undefined || raw === null) {
      if (required) this.report(path, field.expected, raw === undefined ? "missing" : "null");
      return SKIP;
    }
    if (path.length === 1) this.present.add(field.name);
    return this.readValue(field, raw, path);
  }

  readValue(field: FieldSpec, value: unknown, path: Path): unknown {
    switch (field.kind) {
      case "string":
      case "text":
      case "enum":
      case "ref":
        return this.readString(field, value, path);
      case "list":
        if (Array.isArray(value)) return this.readList(field, value, path);
        break;
      case "map":
        if (isMap(value)) return this.readMap(value, field.fields ?? [], path);
        break;
      case "int":
        if (typeof value === "number" && Number.isInteger(value)) return this.checkRange(field, value, path);
        break;
      case "float":
        if (typeof value === "number" && Number.isFinite(value)) return this.checkRange(field, value, path);
        break;
      case "bool":
        if (typeof value === "boolean") return value;
        break;
      case "timestamp":
        if (value instanceof Date) {
          const [low, high] = field.timestampRange!;
          const at = value.getTime();
          if (Number.isNaN(at) || at < low || at > high) {
            this.report(path, field.expected, "timestamp out of range");
            return SKIP;
          }
          return new Date(at);
        }
        break;
    }
    this.report(path, field.expected, describe(value));
    return SKIP;
  }

  readList(field: FieldSpec, items: unknown[], path: Path): unknown {
    const limit = field.maxItems ?? Infinity;
    if (items.length > limit) {
      this.report(path, `list of at most ${limit} items`, `list of ${items.length} items`);
      return SKIP;
    }
    const out: unknown[] = [];
    items.forEach((item, index) => {
      const value = this.readSlot(item, field.item!, [...path, index], true);
      if (value !== SKIP) out.push(value);
    });
    return out;
  }

  readString(field: FieldSpec, value: unknown, path: Path): unknown {
    let source: string;
    let text: string;
    if (typeof value === "string") [source, text] = ["text", value];
    else if (field.kind !== "text" && A.isImmutableString(value)) [source, text] = ["str", value.toString()];
    else {
      this.report(path, field.expected, describe(value));
      return SKIP;
    }
    const chars = field.maxLength === undefined || text.length <= field.maxLength ? -1 : [...text].length;
    if (field.maxLength !== undefined && chars > field.maxLength) this.report(path, tooLong(field), `${source} of ${chars} characters`);
    else if (text.includes("\u0000")) this.report(path, `${field.expected} without NUL characters`, `${source} containing NUL`);
    else if (field.enum && !field.enum.includes(text)) this.report(path, field.expected, `${source} ${short(text)}`);
    else if (field.pattern && !field.pattern.test(text)) this.report(path, field.expected, `${source} ${short(text)}`);
    else return text;
    return SKIP;
  }

  checkRange(field: FieldSpec, value: number, path: Path): unknown {
    if ((field.minimum !== undefined && value < field.minimum) || (field.maximum !== undefined && value > field.maximum)) {
      this.report(path, rangeText(field), describe(value));
      return SKIP;
    }
    return value;
  }
}

function isMap(value: unknown): value is Record<string, unknown> {
  return (
    typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date) &&
    !(value instanceof Uint8Array) && !A.isImmutableString(value) && !A.isCounter(value)
  );
}

export interface Inspection {
  /** The schema's fields as plain values; absent, null and invalid ones left out. */
  readonly values: Record<string, unknown>;
  readonly violations: readonly SchemaViolation[];
}

/** Materialise and validate a document (any Automerge doc or plain object); never throws
 * for its content. */
export function inspect(entityType: string, doc: unknown): Inspection {
  const spec = SCHEMAS.get(entityType);
  if (spec === undefined) {
    return { values: {}, violations: [{ entityType, field: "(document)", expected: "a known entity type", got: entityType }] };
  }
  const reader = new DocReader();
  let values: Record<string, unknown> = {};
  try {
    values = reader.readMap(doc as Record<string, unknown>, spec.fields, []);
    const names = spec.requireOneOf;
    if (names.length > 0 && !names.some((n) => reader.present.has(n))) {
      reader.report([names.join("|")], `at least one of ${names.join(", ")}`, "missing");
    }
  } catch (error) {
    if (!(error instanceof Full)) throw error;
  }
  const found = [...reader.found].sort((a, b) => comparePaths(a[0], b[0]) || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0) || (a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0));
  return { values, violations: found.map(([path, expected, got]) => ({ entityType, field: pathText(path), expected, got })) };
}

export function violationText(v: SchemaViolation): string {
  return `${v.entityType} field '${v.field}': expected ${v.expected}, got ${v.got}.`;
}
