/**
 * Conflicts as the app sees them: what a merge broke, from the server's conflict records
 * (docs/conflicts.md). The client keeps the last known record of each; a conflict closes on
 * the server when an ordinary change removes its cause (`Project.resolveConflict` writes
 * that change for a concurrent same-field edit).
 */
import type { ConflictRecord } from "./generated/protocol.js";
import { entitySpec } from "./schema.js";

export interface ConflictChange {
  readonly hash: string;
  readonly actor: string;
  readonly user?: string;
}

export class Conflict {
  readonly conflictId: string;
  readonly kind: string;
  readonly status: string;
  readonly entityIds: readonly string[];
  readonly fields: readonly string[];
  /** The competing values as the server recorded them (JSON: timestamps as ISO strings). */
  readonly values: Readonly<Record<string, unknown>>;
  readonly changes: readonly ConflictChange[];
  /** What the server's rule did, or null when a lead must decide. */
  readonly resolution: string | null;
  readonly openedSeq: number;
  readonly resolvedSeq: number | null;

  constructor(record: ConflictRecord) {
    const details = record.details;
    this.conflictId = record.conflict_id;
    this.kind = record.kind;
    this.status = record.status;
    this.entityIds = record.entity_ids;
    this.fields = record.fields;
    this.values = isObject(details.values) ? details.values : {};
    this.changes = Array.isArray(details.changes) ? (details.changes.filter(isObject) as unknown as ConflictChange[]) : [];
    this.resolution = typeof details.resolution === "string" ? details.resolution : null;
    this.openedSeq = record.opened_seq;
    this.resolvedSeq = record.resolved_seq;
  }

  get open(): boolean {
    return this.status === "open";
  }

  get needsLead(): boolean {
    return this.resolution === null;
  }

  get changeHashes(): string[] {
    return this.changes.map((c) => c.hash).filter((h): h is string => typeof h === "string");
  }

  /** A concurrent edit's competing values, the shown one first, typed like the field
   * (timestamps as Dates): pass one to `Project.resolveConflict`. */
  candidates(entityType: string): unknown[] {
    if (this.kind !== "concurrent_edit" || this.fields.length !== 1) throw new TypeError(`a ${this.kind} conflict has no candidate values`);
    const raw = this.values.candidates;
    if (!Array.isArray(raw)) return [];
    const field = entitySpec(entityType)?.fields.find((f) => f.name === this.fields[0]);
    return field?.kind === "timestamp" ? raw.map((v) => (typeof v === "string" ? new Date(v) : v)) : [...raw];
  }
}

export interface ConflictUpdate {
  readonly projectId: string;
  readonly changed: readonly Conflict[];
  readonly removed: readonly string[];
  /** True: the project's whole set was replaced (a snapshot). */
  readonly snapshot: boolean;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
