/**
 * One opened project: read and edit its entities, watch what the server changes.
 *
 * Every edit is validated against the entity's schema (the server's own rules, from the
 * contract) and throws `ValidationError` without storing anything if it does not fit. An
 * edit that resolves has been written to storage, with its change in the outbox; sync
 * pushes it when it can. Edits of one project run one at a time, in call order.
 */
import { attachmentUrl, type AttachmentStatus, type AttachmentVariant, type LocalCopy } from "./attachments.js";
import type { FieldsyncClient } from "./client.js";
import { Conflict, type ConflictUpdate } from "./conflicts.js";
import { AttachmentUnavailable, ConflictNotResolvable, Offline, ValidationError, type ProjectUnavailable } from "./errors.js";
import { Listeners } from "./events.js";
import type { Attachment, EntityType, EntityTypes } from "./generated/entities.js";
import type { Doc, ProjectReplica } from "./replica.js";
import { isValidEntityId } from "./schema.js";
import { sha256Hex } from "./sha256.js";
import type { OutboxRow, UploadRow } from "./store/types.js";
import { syncUrl } from "./sync-loop.js";
import type { RemoteChanges } from "./sync-loop.js";
import * as writer from "./writer.js";

/** A local change the server refused (or that built on one it refused); it is no longer in
 * the local document. `code` is an entity reject code (`schema_violation`,
 * `foreign_change`, `unsupported_value` ...), a push error code (`forbidden`), or
 * `depends_on_rejected` for a later local edit of the same entity. */
export interface RejectedChange {
  readonly id: number;
  readonly projectId: string;
  readonly entityType: string;
  readonly entityId: string;
  readonly code: string;
  readonly message: string;
  readonly details: Readonly<Record<string, unknown>>;
  readonly createdAt: number;
  readonly rejectedAt: number;
  readonly hash: string;
}

type Values<T extends EntityType> = EntityTypes[T];
type Update<T extends EntityType> = { [K in keyof Values<T>]?: Values<T>[K] | null };

function rejectedOf(row: OutboxRow): RejectedChange {
  return {
    id: row.id,
    projectId: row.projectId,
    entityType: row.entityType,
    entityId: row.entityId,
    code: row.code ?? "",
    message: row.message ?? "",
    details: row.details ?? {},
    createdAt: row.createdAt,
    rejectedAt: row.rejectedAt ?? 0,
    hash: row.hash,
  };
}

/** A random UUID (v4); `crypto.randomUUID` exists only in secure contexts, a WebView's
 * `http://` page may not be one. */
function newId(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export class Project {
  readonly projectId: string;
  readonly changes = new Listeners<RemoteChanges>();
  readonly rejections = new Listeners<RejectedChange[]>();
  readonly conflictUpdates = new Listeners<ConflictUpdate>();
  readonly attachmentUpdates = new Listeners<string[]>();

  constructor(private readonly client: FieldsyncClient, private readonly replica: ProjectReplica) {
    this.projectId = replica.projectId;
  }

  /** The highest server seq the local copy includes; null until the first snapshot. */
  get cursor(): number | null {
    return this.replica.cursor;
  }

  get bootstrapped(): boolean {
    return this.replica.cursor !== null;
  }

  /** Set while the server refuses to sync this project. */
  get error(): ProjectUnavailable | null {
    return this.client.projectError(this.projectId);
  }

  get pendingCount(): number {
    return this.replica.pending.length;
  }

  // --- reading ------------------------------------------------------------------------------

  /** The entity's values: text as strings, timestamps as Dates, lists, maps. A deleted
   * entity comes with `deleted: true`. Throws EntityNotFound. */
  async get<T extends EntityType>(entityType: T, entityId: string): Promise<Values<T>> {
    this.client.check();
    return (await this.replica.values(entityType, entityId)) as unknown as Values<T>;
  }

  /** Every entity of a type, id -> values, ordered by id; deleted ones only if asked. */
  async list<T extends EntityType>(entityType: T, options: { includeDeleted?: boolean } = {}): Promise<Map<string, Values<T>>> {
    this.client.check();
    const out = new Map<string, Values<T>>();
    for (const id of await this.replica.ids(entityType, options.includeDeleted)) out.set(id, (await this.replica.values(entityType, id)) as unknown as Values<T>);
    return out;
  }

  async ids(entityType: EntityType, options: { includeDeleted?: boolean } = {}): Promise<string[]> {
    this.client.check();
    return this.replica.ids(entityType, options.includeDeleted);
  }

  /** The document's heads, sorted: equal heads mean equal documents. */
  async heads(entityId: string): Promise<string[]> {
    this.client.check();
    return this.replica.heads(entityId);
  }

  // --- editing ------------------------------------------------------------------------------

  /** Create an entity in one change; its id (a new UUID unless given). Null values are left out. */
  async create<T extends EntityType>(entityType: T, values: Values<T>, options: { entityId?: string } = {}): Promise<string> {
    this.client.check();
    const entityId = options.entityId ?? newId();
    if (!isValidEntityId(entityId)) throw new ValidationError(`invalid entity id '${String(entityId).slice(0, 70)}': use 1-64 of A-Z a-z 0-9 _ -`);
    await this.replica.run(async () => {
      if (this.replica.exists(entityId)) throw new ValidationError(`an entity '${entityId}' already exists in this project`);
      const doc = writer.createEntity(entityType, values as unknown as Record<string, unknown>);
      await this.replica.commitLocal(entityType, entityId, doc);
    });
    this.client.localChange(this.projectId);
    return entityId;
  }

  /**
   * Set top-level fields in one change (null removes an optional field). A text field is not
   * replaced: the difference is written as splices, so edits others made to other parts of
   * the text merge with this one. Resolves false when nothing changed (nothing is stored).
   */
  update<T extends EntityType>(entityType: T, entityId: string, values: Update<T>): Promise<boolean> {
    return this.edit(entityType, entityId, (doc) => writer.updateEntity(doc, entityType, values as Record<string, unknown>));
  }

  /** Delete `remove` characters at `index` of a text field, then insert `insert`. Indices
   * count UTF-16 code units, as JavaScript strings do. */
  spliceText(entityType: EntityType, entityId: string, field: string, index: number, remove = 0, insert = ""): Promise<boolean> {
    return this.edit(entityType, entityId, (doc) => writer.spliceText(doc, entityType, field, index, remove, insert));
  }

  /** Put a whole new text object in a text field. Only when a new value is really meant:
   * edits others make to the old text at the same time are not merged into it, and a
   * concurrent replacement elsewhere leaves a `concurrent_edit` conflict. */
  replaceText(entityType: EntityType, entityId: string, field: string, text: string): Promise<boolean> {
    return this.edit(entityType, entityId, (doc) => writer.replaceText(doc, entityType, field, text));
  }

  /** Insert one item into a list field (such as an activity's tasks) at `index`. */
  insertItem(entityType: EntityType, entityId: string, field: string, index: number, value: unknown): Promise<boolean> {
    return this.edit(entityType, entityId, (doc) => writer.insertItem(doc, entityType, field, index, value));
  }

  removeItem(entityType: EntityType, entityId: string, field: string, index: number): Promise<boolean> {
    return this.edit(entityType, entityId, (doc) => writer.removeItem(doc, entityType, field, index));
  }

  /** Soft delete: sets `deleted: true` (deletes merge like any other edit). */
  delete(entityType: EntityType, entityId: string): Promise<boolean> {
    return this.edit(entityType, entityId, (doc) => writer.updateEntity(doc, entityType, { deleted: true }));
  }

  private async edit(entityType: string, entityId: string, write: (doc: Doc) => Doc | undefined): Promise<boolean> {
    this.client.check();
    const changed = await this.replica.run(async () => {
      const after = write(await this.replica.draft(entityType, entityId));
      if (after === undefined) return false;
      await this.replica.commitLocal(entityType, entityId, after);
      return true;
    });
    if (changed) this.client.localChange(this.projectId);
    return changed;
  }

  // --- attachments ----------------------------------------------------------------------------

  /**
   * Attach a file or photo to an activity or location; its new attachment id. Works offline:
   * the bytes are kept in the local storage (once per SHA-256), the upload is queued beside
   * the outbox and the id is appended to the entity's `attachments` list, all in one storage
   * write before this resolves. The upload starts by itself when the client is online.
   */
  async attach(
    entityType: "activity" | "location",
    entityId: string,
    data: Uint8Array | ArrayBuffer | Blob,
    options: { fileName?: string; contentType?: string } = {},
  ): Promise<string> {
    this.client.check();
    const isBlob = typeof Blob !== "undefined" && data instanceof Blob;
    const bytes = data instanceof Uint8Array ? data.slice() : isBlob ? new Uint8Array(await data.arrayBuffer()) : new Uint8Array((data as ArrayBuffer).slice(0));
    if (bytes.length === 0) throw new ValidationError("an attachment needs at least one byte");
    const named = (data as { name?: unknown }).name;
    const fileName = options.fileName ?? (typeof named === "string" && named !== "" ? named : null);
    const contentType = options.contentType ?? (isBlob && (data as Blob).type !== "" ? (data as Blob).type : null);
    const sha256 = await sha256Hex(bytes);
    const attachmentId = newId();
    await this.replica.run(async () => {
      const doc = await this.replica.draft(entityType, entityId);
      const listed = doc.attachments;
      const after = writer.insertItem(doc, entityType, "attachments", Array.isArray(listed) ? listed.length : 0, attachmentId)!;
      const row: UploadRow = {
        projectId: this.projectId, attachmentId, sha256, size: bytes.length, fileName, contentType,
        createdAt: Date.now(), state: "waiting", code: null, message: null,
      };
      await this.replica.commitLocal(entityType, entityId, after, [
        { op: "putBlob", sha256, data: bytes },
        { op: "addUpload", row },
      ]);
    });
    this.client.localChange(this.projectId);
    this.client.attached();
    return attachmentId;
  }

  /** Where an attachment stands (see `AttachmentStatus`): the server's status once its
   * attachment entity has synced, else this device's upload queue. */
  async attachmentStatus(attachmentId: string): Promise<AttachmentStatus> {
    this.client.check();
    const upload = await this.replica.run(() => this.client.storage.upload(this.projectId, attachmentId));
    const hasLocalCopy = upload !== undefined;
    if (this.replica.entityType(attachmentId) === "attachment") {
      const values = (await this.replica.values("attachment", attachmentId)) as unknown as Attachment;
      const failed = values.status === "failed";
      return {
        attachmentId, status: values.status, received: values.size, size: values.size,
        code: failed ? "processing_failed" : null, message: failed ? (values.failure ?? null) : null, hasLocalCopy,
      };
    }
    if (upload === undefined) return { attachmentId, status: "unknown", received: null, size: null, code: null, message: null, hasLocalCopy };
    const base = { attachmentId, size: upload.size, hasLocalCopy };
    if (upload.state === "refused") return { ...base, status: "failed", received: null, code: upload.code, message: upload.message };
    if (upload.state === "uploaded") return { ...base, status: "uploaded", received: upload.size, code: null, message: null };
    const received = this.client.uploader?.received(this.projectId, attachmentId);
    return { ...base, status: received === undefined ? "local" : "uploading", received: received ?? null, code: null, message: null };
  }

  /** The bytes this device attached (to show before any thumbnail exists); null for
   * another device's attachment. */
  async localCopy(attachmentId: string): Promise<LocalCopy | null> {
    this.client.check();
    const storage = this.client.storage;
    const upload = await this.replica.run(() => storage.upload(this.projectId, attachmentId));
    if (upload === undefined) return null;
    const data = await this.replica.run(() => storage.blob(upload.sha256));
    return data === undefined ? null : { data, contentType: upload.contentType, fileName: upload.fileName };
  }

  /** The server's address of a thumbnail or the shared copy; requests need the header
   * `Authorization: Bearer <token>` (or use `downloadAttachment`). */
  attachmentUrl(attachmentId: string, variant: AttachmentVariant = "small"): string {
    const url = this.client.options.url;
    if (url === null) throw new Offline("this client has no server URL");
    return attachmentUrl(syncUrl(url), this.projectId, attachmentId, variant);
  }

  /** Download a thumbnail (`small` 256 px, `large` 1280 px, JPEG) or the shared copy
   * (`content`) once the attachment is `ready`. Throws `AttachmentUnavailable` with the
   * server's code (`not_ready`, `no_such_thumbnail`, `project_unavailable`), `Offline`. */
  async downloadAttachment(attachmentId: string, variant: AttachmentVariant = "small"): Promise<{ data: Uint8Array; contentType: string }> {
    const response = await this.client.httpGet(this.attachmentUrl(attachmentId, variant));
    if (response.status !== 200) {
      const answer = (await response.json().catch(() => ({}))) as { code?: unknown; message?: unknown };
      const code = typeof answer.code === "string" ? answer.code : `http_${response.status}`;
      throw new AttachmentUnavailable(code, typeof answer.message === "string" ? answer.message : `the server answered ${response.status}`);
    }
    return { data: new Uint8Array(await response.arrayBuffer()), contentType: response.headers.get("content-type") ?? "application/octet-stream" };
  }

  /** This device's uploads moved (progress, uploaded, refused): the attachment ids. The
   * server's later statuses arrive as changes of the attachment entities (`onChange`). */
  onAttachments(callback: (attachmentIds: string[]) => void): () => void {
    return this.attachmentUpdates.on(callback);
  }

  // --- what the server refused ----------------------------------------------------------------

  /** Local changes the server refused, with its reason; they are never sent again. */
  async rejectedChanges(): Promise<RejectedChange[]> {
    this.client.check();
    return (await this.client.storage.outbox(this.projectId, "rejected")).map(rejectedOf);
  }

  /** Forget rejected changes (all, or those ids) once the user has seen them. */
  async dismissRejected(ids?: readonly number[]): Promise<number> {
    this.client.check();
    const all = (await this.client.storage.outbox(this.projectId, "rejected")).map((r) => r.id);
    const gone = ids === undefined ? all : all.filter((id) => ids.includes(id));
    await this.replica.run(() => this.client.storage.write([{ op: "dismiss", ids: gone }]));
    this.replica.rejectedCount -= gone.length;
    this.client.stateChanged();
    return gone.length;
  }

  async reportRejected(ids: readonly number[]): Promise<void> {
    const wanted = new Set(ids);
    const rows = (await this.client.storage.outbox(this.projectId, "rejected")).filter((r) => wanted.has(r.id));
    if (rows.length) this.rejections.emit(rows.map(rejectedOf));
  }

  // --- conflicts ------------------------------------------------------------------------------

  /** The project's conflicts as last heard from the server: open ones (resolved too if
   * asked), by id. Available offline. */
  async conflicts(options: { includeResolved?: boolean } = {}): Promise<Conflict[]> {
    this.client.check();
    return [...this.replica.conflicts.values()]
      .filter((r) => options.includeResolved || r.status === "open")
      .sort((a, b) => (a.conflict_id < b.conflict_id ? -1 : 1))
      .map((r) => new Conflict(r));
  }

  async conflict(conflictId: string): Promise<Conflict | null> {
    const record = this.replica.conflicts.get(conflictId);
    return record === undefined ? null : new Conflict(record);
  }

  /** Settle a concurrent same-field edit by writing `value` (one of
   * `conflict.candidates(type)`, or any other valid value) to the field: an ordinary edit
   * made after seeing every value, which closes the conflict on the server. */
  async resolveConflict(conflictId: string, value: unknown): Promise<boolean> {
    const conflict = await this.conflict(conflictId);
    if (conflict === null) throw new ConflictNotResolvable(`no conflict '${conflictId.slice(0, 70)}' in this project`);
    if (conflict.kind !== "concurrent_edit" || conflict.entityIds.length !== 1) {
      throw new ConflictNotResolvable(`a ${conflict.kind} conflict is resolved by ordinary edits of its entities`);
    }
    if (!conflict.open) throw new ConflictNotResolvable("the conflict is already resolved");
    const entityId = conflict.entityIds[0]!;
    if (!(await this.replica.hasChanges(entityId, conflict.changeHashes))) {
      throw new ConflictNotResolvable("this client does not hold every competing change yet: sync, then resolve");
    }
    const entityType = this.replica.entityType(entityId)!;
    const field = conflict.fields[0]!;
    return this.edit(entityType, entityId, (doc) => writer.overwriteField(doc, entityType, field, value));
  }

  // --- notifications --------------------------------------------------------------------------

  /** Server data changed entities (the app's own changes coming back are not reported). */
  onChange(callback: (event: RemoteChanges) => void): () => void {
    return this.changes.on(callback);
  }

  onRejected(callback: (changes: RejectedChange[]) => void): () => void {
    return this.rejections.on(callback);
  }

  onConflicts(callback: (update: ConflictUpdate) => void): () => void {
    return this.conflictUpdates.on(callback);
  }

  closeListeners(): void {
    this.changes.clear();
    this.rejections.clear();
    this.conflictUpdates.clear();
    this.attachmentUpdates.clear();
  }
}
