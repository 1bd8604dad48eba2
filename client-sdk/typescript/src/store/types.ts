/**
 * The storage adapter: where the local copy lives (IndexedDB in browsers, SQLite in Node,
 * memory in tests; React Native can plug its own). It holds, per project, every entity
 * document (Automerge saved bytes), the cursor, the outbox of changes the server has not
 * acknowledged (and those it refused, with the reason), and the last known record of each
 * conflict; and the attachments waiting to upload beside the outbox, with their bytes
 * (stored once per SHA-256).
 *
 * An adapter has two duties: `write(ops)` applies every op of one call atomically and
 * durably (on disk when the promise resolves: a local edit's document and its outbox entry,
 * or remote changes and the new cursor, go in one call), and reads return what the last
 * resolved write left. The SDK calls one method at a time per client.
 */
import type { ConflictRecord } from "../generated/protocol.js";

export interface ProjectRow {
  readonly projectId: string;
  /** The highest server seq the documents include; null until the first snapshot. */
  readonly cursor: number | null;
  /** Milliseconds since the epoch: the last time everything was up to date both ways. */
  readonly lastSyncedAt: number | null;
}

export interface EntityRow {
  readonly projectId: string;
  readonly entityId: string;
  readonly entityType: string;
  /** Automerge saved format (`Automerge.load` input). */
  readonly document: Uint8Array;
  /** True when the document says `deleted: true`; null when not known yet (a snapshot
   * stored as the server sent it). */
  readonly deleted: boolean | null;
}

export interface EntityMeta {
  readonly entityId: string;
  readonly entityType: string;
  readonly deleted: boolean | null;
}

export interface OutboxRow {
  /** Assigned by the adapter, increasing: the order the changes were made in. */
  readonly id: number;
  readonly projectId: string;
  readonly entityType: string;
  readonly entityId: string;
  readonly change: Uint8Array;
  /** The change's Automerge hash (hex). */
  readonly hash: string;
  readonly createdAt: number;
  readonly state: "pending" | "rejected";
  readonly code: string | null;
  readonly message: string | null;
  readonly details: Record<string, unknown> | null;
  readonly rejectedAt: number | null;
}

/** An attachment this device attached: its upload, waiting, done or refused for good. */
export interface UploadRow {
  readonly projectId: string;
  readonly attachmentId: string;
  /** The bytes' SHA-256 (hex): the key of the local copy (`blob(sha256)`). */
  readonly sha256: string;
  readonly size: number;
  readonly fileName: string | null;
  /** The type the app gave (display only: the server reads the type from the bytes). */
  readonly contentType: string | null;
  readonly createdAt: number;
  readonly state: "waiting" | "uploaded" | "refused";
  /** Why the server refused it for good (`unsupported_type`, `too_large`, ...). */
  readonly code: string | null;
  readonly message: string | null;
}

export type NewOutboxRow = Pick<OutboxRow, "projectId" | "entityType" | "entityId" | "change" | "hash" | "createdAt">;

export type WriteOp =
  | { readonly op: "putProject"; readonly project: ProjectRow }
  | { readonly op: "putEntity"; readonly entity: EntityRow }
  | { readonly op: "deleteEntity"; readonly projectId: string; readonly entityId: string }
  | { readonly op: "addOutbox"; readonly row: NewOutboxRow }
  | { readonly op: "acknowledge"; readonly ids: readonly number[] }
  | {
      readonly op: "reject";
      readonly ids: readonly number[];
      readonly code: string;
      readonly message: string;
      readonly details: Record<string, unknown>;
      readonly at: number;
    }
  | { readonly op: "dismiss"; readonly ids: readonly number[] }
  | { readonly op: "putConflict"; readonly projectId: string; readonly record: ConflictRecord }
  | { readonly op: "deleteConflict"; readonly projectId: string; readonly conflictId: string }
  | { readonly op: "clearConflicts"; readonly projectId: string }
  /** Keep bytes under their SHA-256 (kept as they are if already there). */
  | { readonly op: "putBlob"; readonly sha256: string; readonly data: Uint8Array }
  /** Queue an upload (nothing changes if the attachment id is already queued). */
  | { readonly op: "addUpload"; readonly row: UploadRow }
  | {
      readonly op: "setUpload";
      readonly projectId: string;
      readonly attachmentId: string;
      readonly state: UploadRow["state"];
      readonly code: string | null;
      readonly message: string | null;
    };

export interface Storage {
  /** A stable id for this installation (created on first use), sent in `hello`. */
  clientId(): Promise<string>;
  /** Apply every op atomically and durably; resolves with the ids the `addOutbox` rows got,
   * in order. */
  write(ops: readonly WriteOp[]): Promise<readonly number[]>;
  project(projectId: string): Promise<ProjectRow | undefined>;
  entity(projectId: string, entityId: string): Promise<EntityRow | undefined>;
  /** Every entity of the project without its document. */
  entityIndex(projectId: string): Promise<EntityMeta[]>;
  /** Outbox rows of the project in one state, oldest first. */
  outbox(projectId: string, state: "pending" | "rejected"): Promise<OutboxRow[]>;
  conflicts(projectId: string): Promise<ConflictRecord[]>;
  /** The project's uploads, oldest first; only those in `state` if given. */
  uploads(projectId: string, state?: UploadRow["state"]): Promise<UploadRow[]>;
  upload(projectId: string, attachmentId: string): Promise<UploadRow | undefined>;
  /** The bytes kept under this SHA-256 (`putBlob`). */
  blob(sha256: string): Promise<Uint8Array | undefined>;
  close(): Promise<void>;
}

export function newClientId(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
