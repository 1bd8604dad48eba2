/** Choosing which outbox rows go into the next push, within the server's limits. */
import type { OutboxRow } from "./store/types.js";

const ENTITY_OVERHEAD_BYTES = 256; // msgpack keys, type and id of one entity entry, generously
const CHANGE_OVERHEAD_BYTES = 8; // the bin header of one change
const PUSH_OVERHEAD_BYTES = 256;

/** A row to send: an outbox row, or (id 0) a change sent again to fill a gap the server has. */
export type Sendable = Pick<OutboxRow, "id" | "entityType" | "entityId" | "change" | "hash">;

export interface EntityBatch {
  readonly entityType: string;
  readonly entityId: string;
  readonly entries: readonly Sendable[];
  /** The entries' changes: what a push carries for the entity (`PushEntity`). */
  readonly changes: readonly Uint8Array[];
}

/** How many ops a change holds; the server bounds a push by ops too (`max_ops_per_push`). */
export type OpCount = (change: Uint8Array) => number;

/**
 * The next push: entities in the order of their oldest pending change, each with its oldest
 * changes (a prefix, so dependencies travel first), within the limits (`maxOps` counted
 * with `opsOf`). It holds at least one change whenever `pending` is not empty, even one over
 * a bound (the server then refuses it with a reason the app can see).
 */
export function planPush(
  pending: readonly Sendable[],
  maxEntities: number,
  maxChangesPerEntity: number,
  maxBytes: number,
  maxOps: number = Number.POSITIVE_INFINITY,
  opsOf: OpCount = () => 0,
): EntityBatch[] {
  const grouped = new Map<string, Sendable[]>();
  for (const entry of pending) {
    const list = grouped.get(entry.entityId);
    if (list) list.push(entry);
    else grouped.set(entry.entityId, [entry]);
  }
  const batches: EntityBatch[] = [];
  let size = PUSH_OVERHEAD_BYTES;
  let ops = 0;
  for (const [entityId, entries] of grouped) {
    if (batches.length >= maxEntities) break;
    const taken: Sendable[] = [];
    let extra = ENTITY_OVERHEAD_BYTES;
    let extraOps = 0;
    for (const entry of entries.slice(0, maxChangesPerEntity)) {
      const cost = entry.change.length + CHANGE_OVERHEAD_BYTES;
      const costOps = opsOf(entry.change);
      const over = size + extra + cost > maxBytes || ops + extraOps + costOps > maxOps;
      if (over && (batches.length > 0 || taken.length > 0)) break;
      taken.push(entry);
      extra += cost;
      extraOps += costOps;
    }
    if (taken.length === 0) break;
    batches.push({ entityType: taken[0]!.entityType, entityId, entries: taken, changes: taken.map((e) => e.change) });
    size += extra;
    ops += extraOps;
    if (taken.length < Math.min(entries.length, maxChangesPerEntity)) break; // the frame is full
  }
  return batches;
}

/** The hashes in a `missing_dependencies` rejection's details; null if unreadable. */
export function missingHashes(details: Record<string, unknown>): Set<string> | null {
  const listed = details.missing;
  if (!Array.isArray(listed) || listed.length === 0) return null;
  const found = new Set<string>();
  for (const item of listed) {
    if (typeof item !== "string" || !/^[0-9a-f]{64}$/u.test(item)) return null;
    found.add(item);
  }
  return found;
}

/** The wanted changes and everything they depend on, in the history's (causal) order;
 * null when the history does not hold all of them. */
export function withAncestors<T extends { hash: string; deps: readonly string[] }>(history: readonly T[], wanted: Set<string>): T[] | null {
  const held = new Set(history.map((c) => c.hash));
  for (const hash of wanted) if (!held.has(hash)) return null;
  const needed = new Set(wanted);
  const picked: T[] = [];
  for (const change of [...history].reverse()) {
    if (needed.has(change.hash)) {
      for (const dep of change.deps) needed.add(dep);
      picked.push(change);
    }
  }
  return picked.reverse();
}
