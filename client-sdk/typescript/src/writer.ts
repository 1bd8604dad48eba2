/**
 * Writing plain values into entity documents with the Automerge type the schema names
 * (`x-fieldsync.automerge` in the contract): a `text` field becomes a collaborative Text
 * object, a `str` field a scalar string (`ImmutableString`; JavaScript Automerge would make
 * every string a Text object), a `f64` field a Float64, a timestamp a Timestamp. So what the
 * SDK writes never gets a change rejected for its types.
 *
 * Setting a text field that already holds a Text object edits it: only the difference is
 * written, as splices (`Automerge.updateText`), so two people changing different parts of
 * a description offline both keep their edits. `replaceText` is the explicit whole
 * replacement. Every function makes at most one change; an edit that leaves the document as
 * it was makes none.
 */
import * as A from "@automerge/automerge";

import { ValidationError } from "./errors.js";
import { entitySpec, type FieldSpec } from "./schema.js";

type Doc = A.Doc<Record<string, unknown>>;
type Draft = Record<string, unknown>;

function fieldOf(fields: readonly FieldSpec[], name: string, where: string): FieldSpec {
  const field = fields.find((f) => f.name === name);
  if (field === undefined) throw new ValidationError(`${where} has no field '${name}'`);
  return field;
}

export function topField(entityType: string, name: string): FieldSpec {
  const spec = entitySpec(entityType);
  if (spec === undefined) throw new ValidationError(`unknown entity type '${entityType}'`);
  return fieldOf(spec.fields, name, entityType);
}

/** A value ready to write: a scalar as Automerge should store it, or a container to build.
 * Containers are built one field at a time (`put`): Automerge 3 stores a `Float64` nested in
 * an object literal as a map `{value: n}`, so whole nested literals are never assigned. */
export type Planned = { readonly scalar: unknown } | { readonly map: readonly [string, Planned][] } | { readonly list: readonly Planned[] };

/** What to write for `value` in `field`, checked against the field's type. */
export function automergeValue(field: FieldSpec, value: unknown): Planned {
  const wrong = (what: string): never => {
    throw new ValidationError(`${field.name} is ${what}, got ${describeInput(value)}`);
  };
  switch (field.automerge) {
    case "text":
      return { scalar: typeof value === "string" ? value : wrong("text") };
    case "str":
      return { scalar: typeof value === "string" ? new A.ImmutableString(value) : wrong("a string") };
    case "f64":
      return { scalar: typeof value === "number" ? new A.Float64(value) : wrong("a number") };
    case "int":
      return { scalar: typeof value === "number" && Number.isInteger(value) ? new A.Int(value) : wrong("an integer") };
    case "boolean":
      return { scalar: typeof value === "boolean" ? value : wrong("a boolean") };
    case "timestamp":
      // Automerge stores an invalid Date silently as 1970-01-01: refuse it here.
      return { scalar: value instanceof Date && !Number.isNaN(value.getTime()) ? new Date(value.getTime()) : wrong("a valid Date") };
    case "list":
      return { list: Array.isArray(value) ? value.map((item) => automergeValue(field.item!, item)) : wrong("a list") };
    case "map": {
      if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Date) wrong("a map");
      const entries = Object.entries(value as Record<string, unknown>).filter(([, inner]) => inner !== undefined);
      return { map: entries.map(([name, inner]) => [name, automergeValue(fieldOf(field.fields ?? [], name, field.name), inner)]) };
    }
  }
  throw new ValidationError(`${field.name}: no Automerge type for ${field.automerge}`);
}

/** Write a planned value at `target[key]` (or insert it at list index `key`), inside a change. */
export function put(target: Record<string, unknown> | unknown[], key: string | number, planned: Planned, insert = false): void {
  const set = (value: unknown): void => {
    if (insert) A.insertAt(target as unknown[], key as number, value);
    else (target as Record<string | number, unknown>)[key] = value;
  };
  if ("scalar" in planned) return set(planned.scalar);
  if ("map" in planned) {
    set({});
    const obj = (target as Record<string | number, unknown>)[key] as Record<string, unknown>;
    for (const [name, inner] of planned.map) put(obj, name, inner);
    return;
  }
  set([]);
  const list = (target as Record<string | number, unknown>)[key] as unknown[];
  planned.list.forEach((item, index) => put(list, index, item, true));
}

function describeInput(value: unknown): string {
  if (value instanceof Date) return "an invalid Date";
  if (value === null) return "null";
  return Array.isArray(value) ? "an array" : typeof value;
}

function changed(before: Doc, after: Doc): boolean {
  const a = A.getHeads(before);
  const b = A.getHeads(after);
  return a.length !== b.length || a.some((h, i) => h !== b[i]);
}

/** A new entity document holding `values` (nulls left out), made in one change. */
export function createEntity(entityType: string, values: Record<string, unknown>, actor?: string): Doc {
  const writes = Object.entries(values)
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([name, value]) => [name, automergeValue(topField(entityType, name), value)] as const);
  if (writes.length === 0) throw new ValidationError(`a new ${entityType} needs values`);
  const base = actor === undefined ? A.init<Draft>() : A.init<Draft>({ actor });
  return A.change(base, (d) => {
    for (const [name, value] of writes) put(d, name, value);
  });
}

/** Set (or, for null, remove) top-level fields in one change; `undefined` when nothing changed. */
export function updateEntity(doc: Doc, entityType: string, values: Record<string, unknown>): Doc | undefined {
  const writes = Object.entries(values).map(([name, value]) => {
    const field = topField(entityType, name);
    return [name, field, value === null || value === undefined ? null : automergeValue(field, value)] as const;
  });
  const after = A.change(doc, (d) => {
    for (const [name, field, value] of writes) {
      if (value === null) {
        if (name in d) delete d[name];
      } else if (field.automerge === "text" && typeof d[name] === "string" && "scalar" in value) {
        A.updateText(d, [name], value.scalar as string);
      } else {
        put(d, name, value);
      }
    }
  });
  return changed(doc, after) ? after : undefined;
}

/** A new Text object holding `text` in a text field, in place of the old one (see README). */
export function replaceText(doc: Doc, entityType: string, name: string, text: string): Doc | undefined {
  const field = topField(entityType, name);
  if (field.automerge !== "text") throw new ValidationError(`${name} is not a text field`);
  const value = automergeValue(field, text);
  const after = A.change(doc, (d) => {
    put(d, name, value);
  });
  return changed(doc, after) ? after : undefined;
}

/** Delete `remove` characters (UTF-16 code units) at `index` of a text field, then insert. */
export function spliceText(doc: Doc, entityType: string, name: string, index: number, remove: number, insert: string): Doc | undefined {
  const field = topField(entityType, name);
  if (field.automerge !== "text" || typeof doc[name] !== "string") throw new ValidationError(`${name} is not a text object in this document`);
  const length = (doc[name] as string).length;
  if (!Number.isInteger(index) || !Number.isInteger(remove) || index < 0 || remove < 0 || index + remove > length) {
    throw new ValidationError(`splice ${index}+${remove} is outside the ${length} characters of ${name}`);
  }
  const after = A.change(doc, (d) => {
    A.splice(d, [name], index, remove, insert);
  });
  return changed(doc, after) ? after : undefined;
}

/** Insert one item into a list field (created if absent), so concurrent inserts merge. */
export function insertItem(doc: Doc, entityType: string, name: string, index: number, value: unknown): Doc | undefined {
  const field = topField(entityType, name);
  if (field.automerge !== "list") throw new ValidationError(`${name} is not a list field`);
  const item = automergeValue(field.item!, value);
  const current = doc[name];
  const length = Array.isArray(current) ? current.length : 0;
  if (!Number.isInteger(index) || index < 0 || index > length) throw new ValidationError(`index ${index} is outside the list ${name} of ${length} items`);
  const after = A.change(doc, (d) => {
    if (!Array.isArray(d[name])) d[name] = [];
    put(d[name] as unknown[], index, item, true);
  });
  return changed(doc, after) ? after : undefined;
}

export function removeItem(doc: Doc, entityType: string, name: string, index: number): Doc | undefined {
  topField(entityType, name);
  const current = doc[name];
  if (!Array.isArray(current)) throw new ValidationError(`${name} is not a list in this document`);
  if (!Number.isInteger(index) || index < 0 || index >= current.length) throw new ValidationError(`index ${index} is outside the list ${name} of ${current.length} items`);
  const after = A.change(doc, (d) => {
    A.deleteAt(d[name] as unknown[], index);
  });
  return changed(doc, after) ? after : undefined;
}

/** Write `value` over every value a field holds, as settling a `concurrent_edit` needs: a new
 * object for a text field (a splice would edit only the object that shows). */
export function overwriteField(doc: Doc, entityType: string, name: string, value: unknown): Doc | undefined {
  const field = topField(entityType, name);
  if (field.automerge === "text" && value !== null && value !== undefined) {
    if (typeof value !== "string") throw new ValidationError(`${name} is text, got ${typeof value}`);
    return replaceText(doc, entityType, name, value);
  }
  return updateEntity(doc, entityType, { [name]: value });
}
