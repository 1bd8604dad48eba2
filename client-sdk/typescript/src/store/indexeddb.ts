/**
 * Storage in IndexedDB, for browsers and tablet WebViews. Every `write` is one readwrite
 * transaction over all stores with `durability: "strict"`, so a local edit's document and
 * its outbox entry are stored together or not at all, and are on disk when it resolves.
 * Version 2 of the database adds the upload queue and the attachments' bytes.
 */
import type { ConflictRecord } from "../generated/protocol.js";
import { StorageError } from "../errors.js";
import { applyOps } from "./memory.js";
import { newClientId, type EntityMeta, type EntityRow, type OutboxRow, type ProjectRow, type Storage, type UploadRow, type WriteOp } from "./types.js";

const STORES = ["meta", "projects", "entities", "outbox", "conflicts", "uploads", "blobs"] as const;

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(new StorageError(`IndexedDB: ${req.error?.message ?? "request failed"}`));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(new StorageError(`IndexedDB: ${tx.error?.message ?? "transaction failed"}`));
    tx.onabort = () => reject(new StorageError(`IndexedDB: ${tx.error?.message ?? "transaction aborted"}`));
  });
}

function createVersion1(db: IDBDatabase): void {
  db.createObjectStore("meta");
  db.createObjectStore("projects", { keyPath: "projectId" });
  const entities = db.createObjectStore("entities", { keyPath: ["projectId", "entityId"] });
  entities.createIndex("byProject", "projectId");
  const outbox = db.createObjectStore("outbox", { keyPath: "id", autoIncrement: true });
  outbox.createIndex("byState", ["projectId", "state"]);
  db.createObjectStore("conflicts", { keyPath: ["projectId", "conflictId"] }).createIndex("byProject", "projectId");
}

export class IndexedDbStorage implements Storage {
  private constructor(private readonly db: IDBDatabase, private readonly id: string) {}

  /** Open (or create) the database `name` in this origin's IndexedDB. */
  static async open(name = "fieldsync", factory: IDBFactory = globalThis.indexedDB): Promise<IndexedDbStorage> {
    if (!factory) throw new StorageError("IndexedDB is not available here");
    const opening = factory.open(name, 2);
    opening.onupgradeneeded = (event) => {
      const db = opening.result;
      if (event.oldVersion < 1) createVersion1(db);
      if (event.oldVersion < 2) {
        db.createObjectStore("uploads", { keyPath: ["projectId", "attachmentId"] }).createIndex("byProject", "projectId");
        db.createObjectStore("blobs");
      }
    };
    const db = await request(opening);
    const tx = db.transaction("meta", "readwrite", { durability: "strict" });
    const meta = tx.objectStore("meta");
    let id = (await request(meta.get("client_id"))) as string | undefined;
    if (id === undefined) {
      id = newClientId("ts-idb-");
      meta.put(id, "client_id");
    }
    await done(tx);
    return new IndexedDbStorage(db, id);
  }

  async clientId(): Promise<string> {
    return this.id;
  }

  async write(ops: readonly WriteOp[]): Promise<readonly number[]> {
    const tx = this.db.transaction([...STORES], "readwrite", { durability: "strict" });
    const finished = done(tx);
    const outbox = tx.objectStore("outbox");
    const pendingUpdates: Promise<void>[] = [];
    const added: Promise<IDBValidKey>[] = [];
    applyOps(ops, {
      putProject: (p) => tx.objectStore("projects").put(p),
      putEntity: (e) => tx.objectStore("entities").put(e),
      deleteEntity: (p, id) => tx.objectStore("entities").delete([p, id]),
      addOutbox: (row) => added.push(request(outbox.add({ ...row, state: "pending", code: null, message: null, details: null, rejectedAt: null }))),
      update: (id, change) => {
        pendingUpdates.push(
          request(outbox.get(id)).then((row: OutboxRow | undefined) => {
            if (row) outbox.put({ ...row, ...change });
          }),
        );
      },
      remove: (id) => outbox.delete(id),
      putConflict: (p, r) => tx.objectStore("conflicts").put({ projectId: p, conflictId: r.conflict_id, record: r }),
      deleteConflict: (p, id) => tx.objectStore("conflicts").delete([p, id]),
      clearConflicts: (p) => tx.objectStore("conflicts").delete(IDBKeyRange.bound([p, ""], [p, "\uffff"])),
      putBlob: (sha256, data) => {
        const blobs = tx.objectStore("blobs");
        pendingUpdates.push(
          request(blobs.getKey(sha256)).then((key) => {
            if (key === undefined) blobs.put(data, sha256);
          }),
        );
      },
      addUpload: (row) => {
        const uploads = tx.objectStore("uploads");
        pendingUpdates.push(
          request(uploads.getKey([row.projectId, row.attachmentId])).then((key) => {
            if (key === undefined) uploads.put(row);
          }),
        );
      },
      setUpload: (p, id, change) => {
        const uploads = tx.objectStore("uploads");
        pendingUpdates.push(
          request(uploads.get([p, id])).then((row: UploadRow | undefined) => {
            if (row) uploads.put({ ...row, ...change });
          }),
        );
      },
    });
    await Promise.all(pendingUpdates);
    const ids = await Promise.all(added);
    await finished;
    return ids.map(Number);
  }

  async project(projectId: string): Promise<ProjectRow | undefined> {
    return (await request(this.db.transaction("projects").objectStore("projects").get(projectId))) as ProjectRow | undefined;
  }

  async entity(projectId: string, entityId: string): Promise<EntityRow | undefined> {
    return (await request(this.db.transaction("entities").objectStore("entities").get([projectId, entityId]))) as EntityRow | undefined;
  }

  /** Every entity row of the project, documents included, in one read (an app's fast start:
   * rows whose bytes it has seen before need not be loaded again). */
  async entities(projectId: string): Promise<EntityRow[]> {
    const index = this.db.transaction("entities").objectStore("entities").index("byProject");
    return (await request(index.getAll(IDBKeyRange.only(projectId)))) as EntityRow[];
  }

  async entityIndex(projectId: string): Promise<EntityMeta[]> {
    const index = this.db.transaction("entities").objectStore("entities").index("byProject");
    const out: EntityMeta[] = [];
    await new Promise<void>((resolve, reject) => {
      const cursor = index.openCursor(IDBKeyRange.only(projectId));
      cursor.onerror = () => reject(new StorageError("IndexedDB: cannot list entities"));
      cursor.onsuccess = () => {
        const at = cursor.result;
        if (!at) return resolve();
        const row = at.value as EntityRow;
        out.push({ entityId: row.entityId, entityType: row.entityType, deleted: row.deleted });
        at.continue();
      };
    });
    return out;
  }

  async outbox(projectId: string, state: "pending" | "rejected"): Promise<OutboxRow[]> {
    const index = this.db.transaction("outbox").objectStore("outbox").index("byState");
    const rows = (await request(index.getAll([projectId, state]))) as OutboxRow[];
    return rows.sort((a, b) => a.id - b.id);
  }

  async conflicts(projectId: string): Promise<ConflictRecord[]> {
    const index = this.db.transaction("conflicts").objectStore("conflicts").index("byProject");
    const rows = (await request(index.getAll(projectId))) as { record: ConflictRecord }[];
    return rows.map((r) => r.record);
  }

  async uploads(projectId: string, state?: UploadRow["state"]): Promise<UploadRow[]> {
    const index = this.db.transaction("uploads").objectStore("uploads").index("byProject");
    const rows = (await request(index.getAll(IDBKeyRange.only(projectId)))) as UploadRow[];
    return rows.filter((r) => state === undefined || r.state === state).sort((a, b) => a.createdAt - b.createdAt);
  }

  async upload(projectId: string, attachmentId: string): Promise<UploadRow | undefined> {
    return (await request(this.db.transaction("uploads").objectStore("uploads").get([projectId, attachmentId]))) as UploadRow | undefined;
  }

  async blob(sha256: string): Promise<Uint8Array | undefined> {
    return (await request(this.db.transaction("blobs").objectStore("blobs").get(sha256))) as Uint8Array | undefined;
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
