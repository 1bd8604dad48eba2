// The SDK writes each field with the Automerge type the schema names, and validates edits
// with the server's rules and wording.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as A from "@automerge/automerge";

import { ValidationError } from "../src/errors.js";
import { inspect } from "../src/schema.js";
import { createEntity, insertItem, replaceText, updateEntity } from "../src/writer.js";

const START = new Date("2026-03-02T08:00:00Z");
const activity = {
  plan_id: "plan-1", title: "Core sampling", description: "Take three cores.", starts_at: START,
  ends_at: new Date(START.getTime() + 6 * 3600_000), status: "planned", tasks: [{ title: "Calibrate", done: false }],
};

test("strings are scalars, text is Text, numbers of float fields are Float64", () => {
  const doc = createEntity("activity", activity);
  assert.ok(A.isImmutableString(doc.title), "a string field holds a scalar string");
  assert.equal(typeof doc.description, "string", "a text field holds a Text object");
  assert.ok(doc.starts_at instanceof Date);
  const location = createEntity("location", { name: "Site", coordinates: { latitude: 45, longitude: 7.5 } });
  assert.equal(inspect("location", location).violations.length, 0);
  assert.deepEqual(inspect("activity", doc).violations, []);
});

test("updating a text field splices the difference into the same object", () => {
  const doc = createEntity("activity", activity);
  const before = A.getObjectId(doc, "description");
  const after = updateEntity(doc, "activity", { description: "Take four cores." })!;
  assert.equal(A.getObjectId(after, "description"), before);
  assert.equal(after.description, "Take four cores.");
  const replaced = replaceText(after, "activity", "description", "New")!;
  assert.notEqual(A.getObjectId(replaced, "description"), before, "replaceText puts a new object");
  assert.equal(updateEntity(replaced, "activity", { description: "New" }), undefined, "no change, no change made");
});

test("violations use the server's fields and words", () => {
  const doc = createEntity("activity", activity);
  const bad = A.change(A.clone(doc), (d: Record<string, unknown>) => {
    d.status = new A.ImmutableString("maybe");
    delete d.ends_at;
    d.description = new A.ImmutableString("scalar");
    d.colour = "red";
  });
  assert.deepEqual(inspect("activity", bad).violations.map((v) => [v.field, v.expected, v.got]), [
    ["colour", "absent (not in the schema)", "unexpected field"],
    ["description", "text", "str 'scalar'"],
    ["ends_at", "timestamp", "missing"],
    ["status", "one of planned, confirmed, in_progress, done, cancelled", "str 'maybe'"],
  ]);
  const far = createEntity("location", { name: "Pole", coordinates: { latitude: 91, longitude: 0 } });
  assert.deepEqual(inspect("location", far).violations.map((v) => [v.field, v.expected]), [["coordinates.latitude", "number from -90 to 90"]]);
  const summoning = createEntity("summoning", { activity_id: "a", starts_at: START, ends_at: START, status: "proposed" });
  assert.deepEqual(inspect("summoning", summoning).violations.map((v) => v.field), ["role_id|user_id"]);
});

test("values of the wrong kind are refused before anything is written", () => {
  assert.throws(() => createEntity("activity", { ...activity, starts_at: new Date(Number.NaN) }), ValidationError);
  assert.throws(() => createEntity("activity", { ...activity, title: 5 }), ValidationError);
  assert.throws(() => createEntity("activity", { ...activity, colour: "red" }), /no field 'colour'/u);
  assert.throws(() => insertItem(createEntity("activity", activity), "activity", "tasks", 9, { title: "x", done: false }), ValidationError);
});
