/**
 * The app's read cache: each entity's plain values, next to a digest of the SDK's stored
 * document bytes they were read from. Loading 10,000 Automerge documents takes seconds; at
 * start the app reads every stored row at once (`IndexedDbStorage.entities`) and loads only
 * those whose bytes changed since it cached them. Same bytes, same document, same values: a
 * stale entry can only be skipped, never shown. The SDK's storage stays the one truth.
 */
const STORE = "values";

export interface Cached {
  readonly entityId: string;
  readonly entityType: string;
  readonly digest: string;
  readonly values: unknown;
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Length and two 32-bit hashes (FNV-1a and a multiplicative one) of the bytes. */
export function digest(bytes: Uint8Array): string {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < bytes.length; i++) {
    const x = bytes[i]!;
    a = Math.imul(a ^ x, 0x01000193);
    b = Math.imul(b ^ x, 0x5bd1e995) ^ (b >>> 15);
  }
  return `${bytes.length}:${(a >>> 0).toString(36)}:${(b >>> 0).toString(36)}`;
}

export class ViewCache {
  private constructor(private readonly db: IDBDatabase, private readonly projectId: string) {}

  static async open(projectId: string): Promise<ViewCache | null> {
    try {
      const opening = indexedDB.open("fieldsync-app-view", 1);
      opening.onupgradeneeded = () => opening.result.createObjectStore(STORE, { keyPath: ["projectId", "entityId"] });
      return new ViewCache(await request(opening), projectId);
    } catch {
      return null; // no cache: every entity is loaded through the SDK
    }
  }

  async all(): Promise<Map<string, Cached>> {
    const store = this.db.transaction(STORE).objectStore(STORE);
    const rows = (await request(store.getAll(IDBKeyRange.bound([this.projectId, ""], [this.projectId, "\uffff"])))) as Cached[];
    return new Map(rows.map((r) => [r.entityId, r]));
  }

  async put(entries: readonly Cached[], removed: readonly string[] = []): Promise<void> {
    if (entries.length === 0 && removed.length === 0) return;
    const tx = this.db.transaction(STORE, "readwrite");
    const store = tx.objectStore(STORE);
    for (const entry of entries) store.put({ ...entry, projectId: this.projectId });
    for (const id of removed) store.delete([this.projectId, id]);
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }

  close(): void {
    this.db.close();
  }
}
