/** Storage in memory: for tests and for apps that keep nothing between runs. Values are
 * copied in and out, so callers never share state with the store. */
import type { ConflictRecord } from "../generated/protocol.js";
import { newClientId, type EntityMeta, type EntityRow, type OutboxRow, type ProjectRow, type Storage, type UploadRow, type WriteOp } from "./types.js";

export class MemoryStorage implements Storage {
  private readonly id = newClientId("ts-mem-");
  private readonly projects = new Map<string, ProjectRow>();
  private readonly entities = new Map<string, Map<string, EntityRow>>();
  private readonly rows = new Map<number, OutboxRow>();
  private readonly conflictRows = new Map<string, Map<string, ConflictRecord>>();
  private readonly uploadRows = new Map<string, UploadRow>();
  private readonly blobs = new Map<string, Uint8Array>();
  private nextId = 1;

  async clientId(): Promise<string> {
    return this.id;
  }

  async write(ops: readonly WriteOp[]): Promise<readonly number[]> {
    const ids: number[] = [];
    applyOps(ops, {
      putProject: (p) => this.projects.set(p.projectId, { ...p }),
      putEntity: (e) => this.byProject(this.entities, e.projectId).set(e.entityId, { ...e, document: e.document.slice() }),
      deleteEntity: (p, id) => this.entities.get(p)?.delete(id),
      addOutbox: (row) => {
        const id = this.nextId++;
        ids.push(id);
        this.rows.set(id, { ...row, change: row.change.slice(), id, state: "pending", code: null, message: null, details: null, rejectedAt: null });
      },
      update: (id, change) => {
        const row = this.rows.get(id);
        if (row) this.rows.set(id, { ...row, ...change });
      },
      remove: (id) => this.rows.delete(id),
      putConflict: (p, r) => this.byProject(this.conflictRows, p).set(r.conflict_id, structuredClone(r)),
      deleteConflict: (p, id) => this.conflictRows.get(p)?.delete(id),
      clearConflicts: (p) => this.conflictRows.delete(p),
      putBlob: (sha256, data) => {
        if (!this.blobs.has(sha256)) this.blobs.set(sha256, data.slice());
      },
      addUpload: (row) => {
        const key = uploadKey(row.projectId, row.attachmentId);
        if (!this.uploadRows.has(key)) this.uploadRows.set(key, { ...row });
      },
      setUpload: (projectId, attachmentId, change) => {
        const key = uploadKey(projectId, attachmentId);
        const row = this.uploadRows.get(key);
        if (row) this.uploadRows.set(key, { ...row, ...change });
      },
    });
    return ids;
  }

  private byProject<T>(maps: Map<string, Map<string, T>>, projectId: string): Map<string, T> {
    let map = maps.get(projectId);
    if (!map) maps.set(projectId, (map = new Map()));
    return map;
  }

  async project(projectId: string): Promise<ProjectRow | undefined> {
    const row = this.projects.get(projectId);
    return row && { ...row };
  }

  async entity(projectId: string, entityId: string): Promise<EntityRow | undefined> {
    const row = this.entities.get(projectId)?.get(entityId);
    return row && { ...row, document: row.document.slice() };
  }

  async entityIndex(projectId: string): Promise<EntityMeta[]> {
    return [...(this.entities.get(projectId)?.values() ?? [])].map(({ entityId, entityType, deleted }) => ({ entityId, entityType, deleted }));
  }

  async outbox(projectId: string, state: "pending" | "rejected"): Promise<OutboxRow[]> {
    return [...this.rows.values()].filter((r) => r.projectId === projectId && r.state === state).sort((a, b) => a.id - b.id);
  }

  async conflicts(projectId: string): Promise<ConflictRecord[]> {
    return [...(this.conflictRows.get(projectId)?.values() ?? [])].map((r) => structuredClone(r));
  }

  async uploads(projectId: string, state?: UploadRow["state"]): Promise<UploadRow[]> {
    return [...this.uploadRows.values()].filter((r) => r.projectId === projectId && (state === undefined || r.state === state)).map((r) => ({ ...r }));
  }

  async upload(projectId: string, attachmentId: string): Promise<UploadRow | undefined> {
    const row = this.uploadRows.get(uploadKey(projectId, attachmentId));
    return row && { ...row };
  }

  async blob(sha256: string): Promise<Uint8Array | undefined> {
    return this.blobs.get(sha256)?.slice();
  }

  async close(): Promise<void> {}
}

function uploadKey(projectId: string, attachmentId: string): string {
  return `${projectId}\u0000${attachmentId}`;
}

/** How each op changes a store: shared by the adapters that are not SQL. */
export interface OpTarget {
  putProject(project: ProjectRow): void;
  putEntity(entity: EntityRow): void;
  deleteEntity(projectId: string, entityId: string): void;
  addOutbox(row: Extract<WriteOp, { op: "addOutbox" }>["row"]): void;
  update(id: number, change: Partial<OutboxRow>): void;
  remove(id: number): void;
  putConflict(projectId: string, record: ConflictRecord): void;
  deleteConflict(projectId: string, conflictId: string): void;
  clearConflicts(projectId: string): void;
  putBlob(sha256: string, data: Uint8Array): void;
  addUpload(row: UploadRow): void;
  setUpload(projectId: string, attachmentId: string, change: Pick<UploadRow, "state" | "code" | "message">): void;
}

export function applyOps(ops: readonly WriteOp[], target: OpTarget): void {
  for (const op of ops) {
    switch (op.op) {
      case "putProject": target.putProject(op.project); break;
      case "putEntity": target.putEntity(op.entity); break;
      case "deleteEntity": target.deleteEntity(op.projectId, op.entityId); break;
      case "addOutbox": target.addOutbox(op.row); break;
      case "acknowledge": for (const id of op.ids) target.remove(id); break;
      case "dismiss": for (const id of op.ids) target.remove(id); break;
      case "reject":
        for (const id of op.ids) target.update(id, { state: "rejected", code: op.code, message: op.message, details: op.details, rejectedAt: op.at });
        break;
      case "putConflict": target.putConflict(op.projectId, op.record); break;
      case "deleteConflict": target.deleteConflict(op.projectId, op.conflictId); break;
      case "clearConflicts": target.clearConflicts(op.projectId); break;
      case "putBlob": target.putBlob(op.sha256, op.data); break;
      case "addUpload": target.addUpload(op.row); break;
      case "setUpload": target.setUpload(op.projectId, op.attachmentId, { state: op.state, code: op.code, message: op.message }); break;
    }
  }
}
