/**
 * One project's entity documents: a cache of Automerge documents over the storage adapter.
 *
 * Every mutation is computed on a copy of the cached document, written to storage in one
 * atomic `write`, and only then swapped into the cache: if anything fails on the way (an
 * edit that does not fit the schema, bytes Automerge refuses, the disk) the cache and the
 * storage still hold the previous state. Mutations of one project run one at a time.
 *
 * Remote changes are not applied when they arrive: an entity's stored bytes are its saved
 * document followed by the change chunks logged since (`Automerge.load` reads both), and
 * the document is materialised when something reads or edits it. Automerge 3 costs about a
 * millisecond per `applyChanges` call on a loaded document, which would make a resync of a
 * few thousand changes take seconds; appending costs nothing, and an entity nobody opens
 * is never loaded. The server sends changes in dependency order; a stored entity that does
 * not load is reported as a `RemoteDataError` when it is read.
 */
import * as A from "@automerge/automerge";

import { EntityNotFound, FieldsyncError, ValidationError } from "./errors.js";
import type { ChangeRecord, ConflictRecord, Limits, SnapshotEntity } from "./generated/protocol.js";
import { inspect, violationText } from "./schema.js";
import type { EntityMeta, OutboxRow, ProjectRow, Storage, WriteOp } from "./store/types.js";

export type Doc = A.Doc<Record<string, unknown>>;

export const DEPENDS_ON_REJECTED = "depends_on_rejected";
const WRONG_ENTITY_TYPE = "wrong_entity_type";

/** Data from the server cannot be applied (the sync loop drops the connection and resumes
 * from the cursor), or a stored document cannot be read. */
export class RemoteDataError extends FieldsyncError {}

const MAGIC = [0x85, 0x6f, 0x4a, 0x83];

/** Whether `bytes` is a sequence of Automerge chunks (magic, checksum, type, length):
 * what a snapshot document must be. The contents are checked when the document is loaded. */
export function looksLikeChunks(bytes: Uint8Array): boolean {
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < 10 || MAGIC.some((m, i) => bytes[at + i] !== m) || bytes[at + 8]! > 2) return false;
    let length = 0;
    let shift = 0;
    let pos = at + 9;
    for (;;) {
      if (pos >= bytes.length || shift > 28) return false;
      const byte = bytes[pos++]!;
      length += (byte & 0x7f) * 2 ** shift;
      shift += 7;
      if ((byte & 0x80) === 0) break;
    }
    at = pos + length;
  }
  return at === bytes.length && bytes.length > 0;
}

export interface RemoteOutcome {
  changed: Set<string>;
  rejected: number[];
}

export interface HistoryChange {
  readonly hash: string;
  readonly deps: readonly string[];
  readonly change: Uint8Array;
}

/** A cached entity: its stored bytes, and the materialised document once something read or
 * edited it (remote changes append to the bytes and drop the document). */
interface Entry {
  readonly entityType: string;
  readonly bytes: Uint8Array;
  doc: Doc | null;
  /** The actor of this device's edits of the entity in this session. */
  actor: string | null;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

const now = (): number => Date.now();

function contained<T>(what: string, call: () => T): T {
  try {
    return call();
  } catch (error) {
    throw new RemoteDataError(`${what}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** How many ops a change holds (the server bounds pushes by ops); 0 if it cannot be read. */
export function changeOpCount(change: Uint8Array): number {
  try {
    return A.decodeChange(change).ops.length;
  } catch {
    return 0; // the server will refuse it with a reason; it costs no ops here
  }
}

function isDeleted(doc: Doc): boolean {
  return doc.deleted === true;
}

function materialise(entry: Entry): Doc {
  if (entry.doc === null) {
    const bytes = entry.bytes;
    entry.doc = contained("a stored document cannot be loaded", () =>
      A.load<Record<string, unknown>>(bytes, entry.actor === null ? undefined : { actor: entry.actor }),
    );
    entry.actor = A.getActorId(entry.doc);
  }
  return entry.doc;
}

function entryOf(entityType: string, doc: Doc, bytes: Uint8Array = A.save(doc)): Entry {
  return { entityType, bytes, doc, actor: A.getActorId(doc) };
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

export class ProjectReplica {
  cursor: number | null;
  lastSyncedAt: number | null;
  /** Unacknowledged local changes, oldest first (a mirror of the storage's pending rows). */
  pending: OutboxRow[];
  rejectedCount: number;
  conflicts: Map<string, ConflictRecord>;
  private readonly cache = new Map<string, Entry>();
  private readonly meta: Map<string, EntityMeta>;
  /** Hashes of this device's changes not seen back from the server yet. */
  private readonly mine = new Set<string>();
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly storage: Storage,
    readonly projectId: string,
    readonly limits: Limits,
    row: ProjectRow,
    meta: EntityMeta[],
    pending: OutboxRow[],
    rejected: number,
    conflicts: ConflictRecord[],
  ) {
    this.cursor = row.cursor;
    this.lastSyncedAt = row.lastSyncedAt;
    this.meta = new Map(meta.map((m) => [m.entityId, m]));
    this.pending = pending;
    this.rejectedCount = rejected;
    this.conflicts = new Map(conflicts.map((c) => [c.conflict_id, c]));
  }

  static async open(storage: Storage, projectId: string, limits: Limits): Promise<ProjectReplica> {
    let row = await storage.project(projectId);
    if (row === undefined) {
      row = { projectId, cursor: null, lastSyncedAt: null };
      await storage.write([{ op: "putProject", project: row }]);
    }
    const [meta, pending, rejected, conflicts] = await Promise.all([
      storage.entityIndex(projectId),
      storage.outbox(projectId, "pending"),
      storage.outbox(projectId, "rejected"),
      storage.conflicts(projectId),
    ]);
    return new ProjectReplica(storage, projectId, limits, row, meta, pending, rejected.length, conflicts);
  }

  /** Run `task` after every mutation queued before it (one at a time per project). */
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.queue.then(task, task);
    this.queue = result.catch(() => undefined);
    return result;
  }

  // --- reading ------------------------------------------------------------------------------

  private async entry(entityId: string): Promise<Entry | undefined> {
    const cached = this.cache.get(entityId);
    if (cached !== undefined) return cached;
    const row = await this.storage.entity(this.projectId, entityId);
    if (row === undefined) return undefined;
    const entry: Entry = { entityType: row.entityType, bytes: row.document, doc: null, actor: null };
    this.cache.set(entityId, entry);
    return entry;
  }

  async require(entityType: string, entityId: string): Promise<Entry> {
    const entry = await this.entry(entityId);
    if (entry === undefined || entry.entityType !== entityType) {
      throw new EntityNotFound(`no ${entityType} '${entityId}' in project ${this.projectId}`);
    }
    return entry;
  }

  entityType(entityId: string): string | undefined {
    return this.meta.get(entityId)?.entityType;
  }

  async values(entityType: string, entityId: string): Promise<Record<string, unknown>> {
    return inspect(entityType, materialise(await this.require(entityType, entityId))).values;
  }

  async heads(entityId: string): Promise<string[]> {
    const entry = await this.entry(entityId);
    if (entry === undefined) throw new EntityNotFound(`no entity '${entityId}' in project ${this.projectId}`);
    return [...A.getHeads(materialise(entry))].sort();
  }

  async ids(entityType: string, includeDeleted = false): Promise<string[]> {
    const ids: string[] = [];
    for (const meta of this.meta.values()) {
      if (meta.entityType !== entityType) continue;
      let deleted = meta.deleted;
      if (deleted === null) {
        deleted = isDeleted(materialise((await this.entry(meta.entityId))!));
        this.meta.set(meta.entityId, { ...meta, deleted });
      }
      if (includeDeleted || !deleted) ids.push(meta.entityId);
    }
    return ids.sort();
  }

  async hasChanges(entityId: string, hashes: readonly string[]): Promise<boolean> {
    const entry = await this.entry(entityId);
    return entry !== undefined && A.hasHeads(materialise(entry), [...hashes]);
  }

  // --- local edits --------------------------------------------------------------------------

  /** A copy of the entity's document to edit (the cached one stays as it is until commit). */
  async draft(entityType: string, entityId: string): Promise<Doc> {
    const doc = materialise(await this.require(entityType, entityId));
    return A.clone(doc, { actor: A.getActorId(doc) });
  }

  exists(entityId: string): boolean {
    return this.meta.has(entityId) || this.cache.has(entityId);
  }

  /** Validate the edited document, then store it and its change in one write (with the
   * `alongside` ops: an attachment's bytes and upload row go with the edit naming it). */
  async commitLocal(entityType: string, entityId: string, doc: Doc, alongside: readonly WriteOp[] = []): Promise<void> {
    const change = A.getLastLocalChange(doc);
    if (change === undefined) throw new Error("the edited document made no change");
    const inspection = inspect(entityType, doc);
    if (inspection.violations.length > 0) {
      const [first, ...rest] = inspection.violations;
      const more = rest.length ? ` (and ${rest.length} more)` : "";
      throw new ValidationError(`invalid ${entityType}: ${violationText(first!)}${more}`, inspection.violations);
    }
    if (change.length > this.limits.max_change_bytes) {
      throw new ValidationError(`the change is ${change.length} bytes; the server takes at most ${this.limits.max_change_bytes}: make smaller edits`);
    }
    const saved = A.save(doc);
    if (saved.length > this.limits.max_document_bytes) {
      throw new ValidationError(`the ${entityType} would grow to ${saved.length} bytes; the server takes at most ${this.limits.max_document_bytes}`);
    }
    const hash = A.decodeChange(change).hash;
    const deleted = inspection.values.deleted === true;
    const row = { projectId: this.projectId, entityType, entityId, change, hash, createdAt: now() };
    const [id] = await this.storage.write([
      { op: "putEntity", entity: { projectId: this.projectId, entityId, entityType, document: saved, deleted } },
      { op: "addOutbox", row },
      ...alongside,
    ]);
    this.pending.push({ ...row, id: id!, state: "pending", code: null, message: null, details: null, rejectedAt: null });
    this.cache.set(entityId, entryOf(entityType, doc, saved));
    this.meta.set(entityId, { entityId, entityType, deleted });
    this.mine.add(hash);
  }

  // --- server data --------------------------------------------------------------------------

  /** Apply logged changes (consecutive seqs after the cursor) and advance the cursor. */
  async applyRemote(records: readonly ChangeRecord[]): Promise<RemoteOutcome> {
    const outcome: RemoteOutcome = { changed: new Set(), rejected: [] };
    if (records.length === 0) return outcome;
    const expected = (this.cursor ?? 0) + 1;
    records.forEach((record, offset) => {
      if (record.seq !== expected + offset) throw new RemoteDataError(`expected seq ${expected + offset}, got ${record.seq}: resume from the cursor`);
    });
    const byEntity = new Map<string, ChangeRecord[]>();
    for (const record of records) {
      const list = byEntity.get(record.entity_id);
      if (list) list.push(record);
      else byEntity.set(record.entity_id, [record]);
    }
    const ops: WriteOp[] = [];
    const updates: [string, Entry][] = [];
    const refused: OutboxRow[] = [];
    const seen: string[] = [];
    for (const [entityId, changes] of byEntity) {
      const entityType = changes[0]!.entity_type;
      let entry = await this.entry(entityId);
      if (entry !== undefined && entry.entityType !== entityType) {
        refused.push(...this.pending.filter((p) => p.entityId === entityId)); // the server's type wins
        entry = undefined;
      }
      const fresh: Uint8Array[] = [];
      for (const record of changes) {
        if (record.change.length > this.limits.max_change_bytes * 2) throw new RemoteDataError(`seq ${record.seq} is larger than any change the server logs`);
        const hash = contained(`seq ${record.seq} is not a valid change`, () => A.decodeChange(record.change).hash);
        if (this.mine.has(hash)) seen.push(hash); // ours, coming back
        else if (entry?.doc == null || !A.hasHeads(entry.doc, [hash])) fresh.push(record.change);
      }
      if (fresh.length === 0) continue;
      const bytes = concat([entry?.bytes ?? new Uint8Array(0), ...fresh]);
      updates.push([entityId, { entityType, bytes, doc: null, actor: entry?.actor ?? null }]);
      ops.push({ op: "putEntity", entity: { projectId: this.projectId, entityId, entityType, document: bytes, deleted: null } });
      outcome.changed.add(entityId);
    }
    const cursor = records[records.length - 1]!.seq;
    ops.push(...this.refuseOps(refused, WRONG_ENTITY_TYPE, "the server holds this id as another type"));
    ops.push({ op: "putProject", project: { projectId: this.projectId, cursor, lastSyncedAt: this.lastSyncedAt } });
    await this.storage.write(ops);
    for (const [entityId, entry] of updates) {
      this.cache.set(entityId, entry);
      this.meta.set(entityId, { entityId, entityType: entry.entityType, deleted: null });
    }
    for (const hash of seen) this.mine.delete(hash);
    this.cursor = cursor;
    outcome.rejected = this.refused(refused);
    return outcome;
  }

  /** Store some entities of a snapshot, each merged with the local copy, in one write; the
   * cursor does not move until `finishSnapshot`, so an interrupted snapshot is asked again. */
  async storeSnapshotPart(entities: readonly SnapshotEntity[]): Promise<RemoteOutcome> {
    const outcome: RemoteOutcome = { changed: new Set(), rejected: [] };
    const ops: WriteOp[] = [];
    const updates: [string, Entry | null, boolean][] = [];
    const refused: OutboxRow[] = [];
    for (const entity of entities) {
      if (!looksLikeChunks(entity.document)) throw new RemoteDataError(`snapshot of ${entity.entity_id} is not an Automerge document`);
      outcome.changed.add(entity.entity_id);
      const meta = this.meta.get(entity.entity_id);
      const sameType = meta !== undefined && meta.entityType === entity.entity_type;
      if (meta === undefined || !sameType) {
        if (meta !== undefined) refused.push(...this.pending.filter((p) => p.entityId === entity.entity_id));
        // Stored as the server sent it: loading it now would only cost time.
        ops.push({ op: "putEntity", entity: { projectId: this.projectId, entityId: entity.entity_id, entityType: entity.entity_type, document: entity.document, deleted: null } });
        updates.push([entity.entity_id, null, false]);
        continue;
      }
      const stored = await this.storage.entity(this.projectId, entity.entity_id);
      if (stored !== undefined && bytesEqual(stored.document, entity.document)) continue;
      const local = (await this.entry(entity.entity_id))!;
      const localDoc = materialise(local);
      const doc = contained(`snapshot of ${entity.entity_id} is unusable`, () =>
        A.merge(A.load<Record<string, unknown>>(entity.document, { actor: A.getActorId(localDoc) }), localDoc),
      );
      const merged = entryOf(entity.entity_type, doc);
      ops.push({ op: "putEntity", entity: { projectId: this.projectId, entityId: entity.entity_id, entityType: entity.entity_type, document: merged.bytes, deleted: isDeleted(doc) } });
      updates.push([entity.entity_id, merged, isDeleted(doc)]);
    }
    ops.push(...this.refuseOps(refused, WRONG_ENTITY_TYPE, "the server holds this id as another type"));
    await this.storage.write(ops);
    for (const [entityId, entry, deleted] of updates) {
      if (entry === null) {
        this.cache.delete(entityId);
        const entityType = entities.find((e) => e.entity_id === entityId)!.entity_type;
        this.meta.set(entityId, { entityId, entityType, deleted: null });
      } else this.swap(entityId, entry, deleted);
    }
    outcome.rejected = this.refused(refused);
    return outcome;
  }

  /** Every entity of the snapshot is stored: the project now holds it at `cursor`, with the
   * snapshot's conflict records in place of the stored ones. Returns the removed ids. */
  async finishSnapshot(cursor: number, conflicts: readonly ConflictRecord[]): Promise<string[]> {
    const kept = latest(conflicts).filter((r) => r.status !== "removed");
    const removed = [...this.conflicts.keys()].filter((id) => !kept.some((r) => r.conflict_id === id));
    await this.storage.write([
      { op: "putProject", project: { projectId: this.projectId, cursor, lastSyncedAt: this.lastSyncedAt } },
      { op: "clearConflicts", projectId: this.projectId },
      ...kept.map((record) => ({ op: "putConflict" as const, projectId: this.projectId, record })),
    ]);
    this.cursor = cursor;
    this.conflicts = new Map(kept.map((r) => [r.conflict_id, r]));
    return removed;
  }

  /** Store conflict updates (they come before the changes they belong to); removed ids. */
  async applyConflicts(records: readonly ConflictRecord[]): Promise<string[]> {
    const ops: WriteOp[] = [];
    const removed: string[] = [];
    for (const record of latest(records)) {
      if (record.status === "removed") {
        ops.push({ op: "deleteConflict", projectId: this.projectId, conflictId: record.conflict_id });
        removed.push(record.conflict_id);
      } else ops.push({ op: "putConflict", projectId: this.projectId, record });
    }
    await this.storage.write(ops);
    for (const record of latest(records)) {
      if (record.status === "removed") this.conflicts.delete(record.conflict_id);
      else this.conflicts.set(record.conflict_id, record);
    }
    return removed;
  }

  async acknowledge(ids: readonly number[]): Promise<void> {
    if (ids.length === 0) return;
    await this.storage.write([{ op: "acknowledge", ids }]);
    const gone = new Set(ids);
    this.pending = this.pending.filter((p) => !gone.has(p.id));
  }

  async setLastSynced(at: number): Promise<void> {
    await this.storage.write([{ op: "putProject", project: { projectId: this.projectId, cursor: this.cursor, lastSyncedAt: at } }]);
    this.lastSyncedAt = at;
  }

  /**
   * The server refused these outbox rows: mark them (and later local edits of the entity,
   * which were built on them) rejected and take them out of the local document, which then
   * matches the server's. Returns every outbox id now rejected.
   */
  async reject(entityId: string, rowIds: readonly number[], code: string, message: string, details: Record<string, unknown>): Promise<number[]> {
    const ids = new Set(rowIds);
    const mine = this.pending.filter((p) => p.entityId === entityId);
    const inPush = mine.filter((p) => ids.has(p.id));
    if (inPush.length === 0) return [];
    const first = Math.min(...inPush.map((p) => p.id));
    const later = mine.filter((p) => p.id > first && !ids.has(p.id));
    const doomed = new Set([...inPush, ...later].map((p) => p.hash));
    const entry = await this.entry(entityId);
    const ops: WriteOp[] = [
      { op: "reject", ids: inPush.map((p) => p.id), code, message, details, at: now() },
      ...this.refuseOps(later, DEPENDS_ON_REJECTED, `made after a change the server refused (${code}), so it cannot be logged`),
    ];
    let update: Entry | null = null;
    if (entry !== undefined) {
      const kept = this.without(entry, doomed);
      update = kept;
      ops.push(
        kept === null
          ? { op: "deleteEntity", projectId: this.projectId, entityId }
          : { op: "putEntity", entity: { projectId: this.projectId, entityId, entityType: kept.entityType, document: kept.bytes, deleted: isDeleted(kept.doc!) } },
      );
    }
    await this.storage.write(ops);
    if (entry !== undefined) {
      if (update === null) {
        this.cache.delete(entityId);
        this.meta.delete(entityId);
      } else this.swap(entityId, update, isDeleted(update.doc!));
    }
    return this.refused([...inPush, ...later]);
  }

  /** Every change of the entity's local document, in causal order. */
  async history(entityId: string): Promise<HistoryChange[]> {
    const entry = await this.entry(entityId);
    if (entry === undefined) return [];
    return A.getAllChanges(materialise(entry)).map((change) => {
      const decoded = A.decodeChange(change);
      return { hash: decoded.hash, deps: decoded.deps, change };
    });
  }

  private without(entry: Entry, hashes: Set<string>): Entry | null {
    const removed = new Set(hashes);
    const kept: Uint8Array[] = [];
    const current = materialise(entry);
    for (const change of A.getAllChanges(current)) {
      const decoded = A.decodeChange(change);
      if (removed.has(decoded.hash) || decoded.deps.some((d) => removed.has(d))) removed.add(decoded.hash);
      else kept.push(change);
    }
    if (kept.length === 0) return null;
    const [doc] = A.applyChanges(A.init<Record<string, unknown>>({ actor: A.getActorId(current) }), kept);
    return entryOf(entry.entityType, doc);
  }

  private refuseOps(rows: readonly OutboxRow[], code: string, message: string): WriteOp[] {
    return rows.length === 0 ? [] : [{ op: "reject", ids: rows.map((r) => r.id), code, message, details: {}, at: now() }];
  }

  /** Drop refused rows from the pending mirror; their ids, sorted. */
  private refused(rows: readonly OutboxRow[]): number[] {
    if (rows.length === 0) return [];
    const gone = new Set(rows.map((r) => r.id));
    this.pending = this.pending.filter((p) => !gone.has(p.id));
    this.rejectedCount += gone.size;
    return [...gone].sort((a, b) => a - b);
  }

  private swap(entityId: string, entry: Entry, deleted: boolean): void {
    this.cache.set(entityId, entry);
    this.meta.set(entityId, { entityId, entityType: entry.entityType, deleted });
  }
}

/** Records by id, the latest of each. */
export function latest(records: readonly ConflictRecord[]): ConflictRecord[] {
  const byId = new Map<string, ConflictRecord>();
  for (const record of records) byId.set(record.conflict_id, record);
  return [...byId.values()];
}
