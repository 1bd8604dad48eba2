/**
 * Storage in one SQLite file, for Node (better-sqlite3 12). WAL with `synchronous=FULL`:
 * a write is on disk when its promise resolves, and a process killed at any instant leaves
 * the last committed state. The file is opened in exclusive locking mode, so a second client
 * on it fails to open instead of racing the first.
 */
import Database from "better-sqlite3";

import type { ConflictRecord } from "../generated/protocol.js";
import { StorageError } from "../errors.js";
import { newClientId, type EntityMeta, type EntityRow, type OutboxRow, type ProjectRow, type Storage, type UploadRow, type WriteOp } from "./types.js";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
  project_id TEXT PRIMARY KEY, cursor INTEGER, last_synced_at REAL);
CREATE TABLE IF NOT EXISTS entities (
  project_id TEXT NOT NULL, entity_id TEXT NOT NULL, entity_type TEXT NOT NULL,
  document BLOB NOT NULL, deleted INTEGER, PRIMARY KEY (project_id, entity_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, project_id TEXT NOT NULL, entity_type TEXT NOT NULL,
  entity_id TEXT NOT NULL, change BLOB NOT NULL, hash TEXT NOT NULL, created_at REAL NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'rejected')), code TEXT, message TEXT,
  details TEXT, rejected_at REAL);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox (project_id, state, id);
CREATE TABLE IF NOT EXISTS conflicts (
  project_id TEXT NOT NULL, conflict_id TEXT NOT NULL, record TEXT NOT NULL,
  PRIMARY KEY (project_id, conflict_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
  project_id TEXT NOT NULL, attachment_id TEXT NOT NULL, sha256 TEXT NOT NULL,
  size INTEGER NOT NULL, file_name TEXT, content_type TEXT, created_at REAL NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('waiting', 'uploaded', 'refused')), code TEXT, message TEXT,
  PRIMARY KEY (project_id, attachment_id));
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
`;

type Row = Record<string, unknown>;

export class SqliteStorage implements Storage {
  private readonly db: Database.Database;
  private readonly statements: Record<string, Database.Statement>;
  private readonly apply: (ops: readonly WriteOp[]) => number[];

  constructor(readonly path: string) {
    try {
      this.db = new Database(path, { timeout: 1000 });
      this.db.pragma("locking_mode = EXCLUSIVE");
      this.db.pragma("journal_mode = WAL");
      this.db.pragma("synchronous = FULL");
      this.db.exec("BEGIN IMMEDIATE");
      this.db.exec(SCHEMA);
      this.db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('client_id', ?)").run(newClientId("ts-"));
      this.db.exec("COMMIT");
    } catch (error) {
      throw new StorageError(`cannot open the local store ${path}: ${String(error)} (one client per file)`);
    }
    const sql = {
      putProject: "INSERT INTO projects (project_id, cursor, last_synced_at) VALUES (?, ?, ?) ON CONFLICT (project_id) DO UPDATE SET cursor = excluded.cursor, last_synced_at = excluded.last_synced_at",
      putEntity: "INSERT INTO entities (project_id, entity_id, entity_type, document, deleted) VALUES (?, ?, ?, ?, ?) ON CONFLICT (project_id, entity_id) DO UPDATE SET entity_type = excluded.entity_type, document = excluded.document, deleted = excluded.deleted",
      deleteEntity: "DELETE FROM entities WHERE project_id = ? AND entity_id = ?",
      addOutbox: "INSERT INTO outbox (project_id, entity_type, entity_id, change, hash, created_at, state) VALUES (?, ?, ?, ?, ?, ?, 'pending')",
      remove: "DELETE FROM outbox WHERE id = ?",
      reject: "UPDATE outbox SET state = 'rejected', code = ?, message = ?, details = ?, rejected_at = ? WHERE id = ?",
      putConflict: "INSERT INTO conflicts (project_id, conflict_id, record) VALUES (?, ?, ?) ON CONFLICT (project_id, conflict_id) DO UPDATE SET record = excluded.record",
      deleteConflict: "DELETE FROM conflicts WHERE project_id = ? AND conflict_id = ?",
      clearConflicts: "DELETE FROM conflicts WHERE project_id = ?",
      project: "SELECT project_id, cursor, last_synced_at FROM projects WHERE project_id = ?",
      entity: "SELECT entity_id, entity_type, document, deleted FROM entities WHERE project_id = ? AND entity_id = ?",
      entityIndex: "SELECT entity_id, entity_type, deleted FROM entities WHERE project_id = ?",
      outbox: "SELECT * FROM outbox WHERE project_id = ? AND state = ? ORDER BY id",
      conflicts: "SELECT record FROM conflicts WHERE project_id = ? ORDER BY conflict_id",
      clientId: "SELECT value FROM meta WHERE key = 'client_id'",
      putBlob: "INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)",
      addUpload: "INSERT OR IGNORE INTO uploads (project_id, attachment_id, sha256, size, file_name, content_type, created_at, state, code, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      setUpload: "UPDATE uploads SET state = ?, code = ?, message = ? WHERE project_id = ? AND attachment_id = ?",
      uploads: "SELECT * FROM uploads WHERE project_id = ? AND (? IS NULL OR state = ?) ORDER BY created_at, rowid",
      upload: "SELECT * FROM uploads WHERE project_id = ? AND attachment_id = ?",
      blob: "SELECT data FROM blobs WHERE sha256 = ?",
    };
    this.statements = Object.fromEntries(Object.entries(sql).map(([k, v]) => [k, this.db.prepare(v)]));
    const s = this.statements as Record<keyof typeof sql, Database.Statement>;
    this.apply = this.db.transaction((ops: readonly WriteOp[]) => {
      const ids: number[] = [];
      for (const op of ops) {
        switch (op.op) {
          case "putProject": s.putProject.run(op.project.projectId, op.project.cursor, op.project.lastSyncedAt); break;
          case "putEntity": {
            const e = op.entity;
            s.putEntity.run(e.projectId, e.entityId, e.entityType, e.document, e.deleted === null ? null : e.deleted ? 1 : 0);
            break;
          }
          case "deleteEntity": s.deleteEntity.run(op.projectId, op.entityId); break;
          case "addOutbox": {
            const r = op.row;
            ids.push(Number(s.addOutbox.run(r.projectId, r.entityType, r.entityId, r.change, r.hash, r.createdAt).lastInsertRowid));
            break;
          }
          case "acknowledge":
          case "dismiss":
            for (const id of op.ids) s.remove.run(id);
            break;
          case "reject":
            for (const id of op.ids) s.reject.run(op.code, op.message, JSON.stringify(op.details), op.at, id);
            break;
          case "putConflict": s.putConflict.run(op.projectId, op.record.conflict_id, JSON.stringify(op.record)); break;
          case "deleteConflict": s.deleteConflict.run(op.projectId, op.conflictId); break;
          case "clearConflicts": s.clearConflicts.run(op.projectId); break;
          case "putBlob": s.putBlob.run(op.sha256, op.data); break;
          case "addUpload": {
            const r = op.row;
            s.addUpload.run(r.projectId, r.attachmentId, r.sha256, r.size, r.fileName, r.contentType, r.createdAt, r.state, r.code, r.message);
            break;
          }
          case "setUpload": s.setUpload.run(op.state, op.code, op.message, op.projectId, op.attachmentId); break;
        }
      }
      return ids;
    });
  }

  async clientId(): Promise<string> {
    return (this.statements.clientId!.get() as Row).value as string;
  }

  async write(ops: readonly WriteOp[]): Promise<readonly number[]> {
    return this.apply(ops);
  }

  async project(projectId: string): Promise<ProjectRow | undefined> {
    const row = this.statements.project!.get(projectId) as Row | undefined;
    return row && { projectId, cursor: row.cursor as number | null, lastSyncedAt: row.last_synced_at as number | null };
  }

  async entity(projectId: string, entityId: string): Promise<EntityRow | undefined> {
    const row = this.statements.entity!.get(projectId, entityId) as Row | undefined;
    return row && { projectId, entityId, entityType: row.entity_type as string, document: new Uint8Array(row.document as Buffer), deleted: deletedOf(row.deleted) };
  }

  async entityIndex(projectId: string): Promise<EntityMeta[]> {
    return (this.statements.entityIndex!.all(projectId) as Row[]).map((row) => ({
      entityId: row.entity_id as string,
      entityType: row.entity_type as string,
      deleted: deletedOf(row.deleted),
    }));
  }

  async outbox(projectId: string, state: "pending" | "rejected"): Promise<OutboxRow[]> {
    return (this.statements.outbox!.all(projectId, state) as Row[]).map((row) => ({
      id: row.id as number,
      projectId,
      entityType: row.entity_type as string,
      entityId: row.entity_id as string,
      change: new Uint8Array(row.change as Buffer),
      hash: row.hash as string,
      createdAt: row.created_at as number,
      state,
      code: (row.code as string | null) ?? null,
      message: (row.message as string | null) ?? null,
      details: row.details ? (JSON.parse(row.details as string) as Record<string, unknown>) : null,
      rejectedAt: (row.rejected_at as number | null) ?? null,
    }));
  }

  async conflicts(projectId: string): Promise<ConflictRecord[]> {
    return (this.statements.conflicts!.all(projectId) as Row[]).map((row) => JSON.parse(row.record as string) as ConflictRecord);
  }

  async uploads(projectId: string, state?: UploadRow["state"]): Promise<UploadRow[]> {
    return (this.statements.uploads!.all(projectId, state ?? null, state ?? null) as Row[]).map(uploadOf);
  }

  async upload(projectId: string, attachmentId: string): Promise<UploadRow | undefined> {
    const row = this.statements.upload!.get(projectId, attachmentId) as Row | undefined;
    return row && uploadOf(row);
  }

  async blob(sha256: string): Promise<Uint8Array | undefined> {
    const row = this.statements.blob!.get(sha256) as Row | undefined;
    return row && new Uint8Array(row.data as Buffer);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

function deletedOf(value: unknown): boolean | null {
  return value === null || value === undefined ? null : value === 1;
}

function uploadOf(row: Row): UploadRow {
  return {
    projectId: row.project_id as string,
    attachmentId: row.attachment_id as string,
    sha256: row.sha256 as string,
    size: row.size as number,
    fileName: (row.file_name as string | null) ?? null,
    contentType: (row.content_type as string | null) ?? null,
    createdAt: row.created_at as number,
    state: row.state as UploadRow["state"],
    code: (row.code as string | null) ?? null,
    message: (row.message as string | null) ?? null,
  };
}
