/**
 * The client: a storage adapter, the projects opened from it, and the sync loop.
 *
 *   const client = await FieldsyncClient.create({ url, token, storage });
 *   const project = await client.openProject(projectId);
 *
 * Edits never wait for the network; sync runs in the background, reconnects by itself and
 * reports through `onStatus`. `pause()` stops syncing (the app keeps working offline) and
 * `resume()` starts again.
 */
import { Uploader, type UploadHost } from "./attachments.js";
import { Backoff } from "./backoff.js";
import type { ConflictUpdate } from "./conflicts.js";
import { ClientClosed, FieldsyncError, Offline, ProjectUnavailable, ValidationError } from "./errors.js";
import { Listeners } from "./events.js";
import { DECODER_BOUNDS, DEFAULT_LIMITS, PROTOCOL_VERSIONS, type Limits } from "./generated/protocol.js";
import { Project } from "./project.js";
import { ProjectReplica } from "./replica.js";
import { sameStatus, type SyncStatus } from "./status.js";
import type { Storage } from "./store/types.js";
import { SyncLoop, syncUrl, type RemoteChanges, type SocketLike, type SyncHost, type TokenSource, type WebSocketFactory } from "./sync-loop.js";

export interface ClientOptions {
  /** The server (`https://sync.example.org`, `ws://127.0.0.1:8000` or `.../sync`); null keeps the client offline. */
  readonly url: string | null;
  /** The user's bearer token, or a function that returns a fresh one (called before each
   * connection, and again when the server refuses a token). */
  readonly token: TokenSource;
  readonly storage: Storage;
  readonly backoffBaseMs?: number;
  readonly backoffCapMs?: number;
  readonly connectTimeoutMs?: number;
  /** How long `openProject` waits for a first snapshot (default 30 s). */
  readonly bootstrapTimeoutMs?: number;
  readonly limits?: Limits;
  readonly protocolVersions?: readonly number[];
  /** First snapshots over HTTP (gzipped, faster) unless false; the WebSocket otherwise. */
  readonly httpSnapshots?: boolean;
  /** Opens WebSockets; the default is the platform's `WebSocket` (browsers, React Native). */
  readonly webSocket?: WebSocketFactory;
  readonly fetch?: typeof fetch;
  /** Bytes per attachment upload request (default 1 MiB). */
  readonly uploadPartBytes?: number;
}

function defaultWebSocket(): WebSocketFactory {
  const Native = (globalThis as { WebSocket?: new (url: string) => SocketLike }).WebSocket;
  if (Native === undefined) throw new TypeError("no WebSocket here: pass options.webSocket (in Node 20: nodeWebSocket from @fieldsync/client/node)");
  return (url) => new Native(url);
}

export class FieldsyncClient implements SyncHost, UploadHost {
  readonly projects = new Map<string, Project>();
  private readonly replicaMap = new Map<string, ProjectReplica>();
  private readonly statuses = new Listeners<SyncStatus>();
  private readonly sync: SyncLoop | null;
  /** Sends attachments waiting to upload (null for a client with no server). */
  readonly uploader: Uploader | null;
  private currentStatus: SyncStatus;
  private closed = false;
  /** Between `pause()` and `resume()`: nothing is sent, attachments neither. */
  private paused = false;
  private readonly fetcher: typeof fetch | undefined;
  private ticks: (() => void)[] = [];
  private readonly onlineListener = (): void => {
    this.sync?.reconnectNow();
    this.uploader?.wake();
  };

  private constructor(readonly storage: Storage, readonly clientId: string, readonly options: ClientOptions) {
    this.fetcher = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
    this.sync =
      options.url === null
        ? null
        : new SyncLoop(this, {
            url: syncUrl(options.url),
            token: options.token,
            clientId,
            backoff: new Backoff(options.backoffBaseMs ?? 500, options.backoffCapMs ?? 30_000),
            connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
            limits: options.limits ?? DEFAULT_LIMITS,
            versions: options.protocolVersions ?? PROTOCOL_VERSIONS,
            httpSnapshots: options.httpSnapshots ?? true,
            webSocket: options.webSocket ?? defaultWebSocket(),
            fetch: this.fetcher,
          });
    this.uploader =
      this.sync === null || this.fetcher === undefined
        ? null
        : new Uploader(this, {
            endpoint: syncUrl(options.url!),
            fetch: this.fetcher,
            backoff: new Backoff(options.backoffBaseMs ?? 500, options.backoffCapMs ?? 30_000),
            ...(options.uploadPartBytes === undefined ? {} : { partBytes: options.uploadPartBytes }),
          });
    this.currentStatus = this.computeStatus();
    // A browser that comes back online need not wait for the backoff delay.
    (globalThis as { addEventListener?: (name: string, f: () => void) => void }).addEventListener?.("online", this.onlineListener);
  }

  static async create(options: ClientOptions): Promise<FieldsyncClient> {
    if (options.url !== null) syncUrl(options.url); // a bad URL fails before anything starts
    return new FieldsyncClient(options.storage, await options.storage.clientId(), options);
  }

  get limits(): Limits {
    return this.options.limits ?? DEFAULT_LIMITS;
  }

  /**
   * Open a project of the local copy, syncing it from now on. The first time, it waits (at
   * most `timeoutMs`, default `bootstrapTimeoutMs`) for the project's snapshot; when the
   * server cannot be reached it returns the empty local project anyway, and the snapshot
   * comes when the network does. Throws `ProjectUnavailable` when the server says the user
   * cannot see the project, `AuthError` or `IncompatibleServer` when it refuses the connection.
   */
  async openProject(projectId: string, options: { timeoutMs?: number } = {}): Promise<Project> {
    this.check();
    if (!projectId || projectId.length > DECODER_BOUNDS.max_project_id_chars) {
      throw new ValidationError(`a project id has 1-${DECODER_BOUNDS.max_project_id_chars} characters`);
    }
    let project = this.projects.get(projectId);
    if (project === undefined) {
      const replica = await ProjectReplica.open(this.storage, projectId, this.limits);
      project = new Project(this, replica);
      this.projects.set(projectId, project);
      this.replicaMap.set(projectId, replica);
      this.sync?.start();
      this.sync?.projectAdded(projectId);
      if (!this.paused) this.uploader?.start(); // uploads left waiting by an earlier run go on
      this.stateChanged();
    }
    const sync = this.sync;
    if (sync === null || project.bootstrapped) return project;
    const wasOffline = sync.state === "offline";
    const attempts = sync.connections;
    if (wasOffline) sync.reconnectNow();
    const opened = project;
    const settled = (): boolean => {
      if (opened.bootstrapped || opened.error !== null || sync.halted !== null) return true;
      if (sync.state === "offline") return sync.connections > attempts || !wasOffline;
      return sync.state === "stopped";
    };
    try {
      await this.waitFor(settled, options.timeoutMs ?? this.options.bootstrapTimeoutMs ?? 30_000);
    } catch (error) {
      if (error instanceof TimeoutError) return project; // still bootstrapping in the background
      throw error;
    }
    if (project.error !== null) {
      const error = project.error;
      this.projects.delete(projectId);
      this.replicaMap.delete(projectId);
      throw error;
    }
    if (sync.halted !== null) throw sync.halted;
    return project;
  }

  /** The user the server's welcome named (the token's subject); null before the first welcome. */
  get userId(): string | null {
    return this.sync?.userId ?? null;
  }

  get status(): SyncStatus {
    return this.currentStatus;
  }

  /** Call `callback` whenever the status changes; returns the function that removes it. */
  onStatus(callback: (status: SyncStatus) => void): () => void {
    return this.statuses.on(callback);
  }

  /** Use a new token (or token function) from the next connection on, and resume after an AuthError. */
  setToken(token: TokenSource): void {
    this.sync?.setToken(token);
  }

  /** Stop syncing (the connection closes; edits go on offline) until `resume()`. */
  async pause(): Promise<void> {
    this.paused = true;
    await Promise.all([this.sync?.stop(), this.uploader?.stop()]);
  }

  resume(): void {
    if (this.sync !== null && !this.closed) {
      this.paused = false;
      this.sync.start();
      this.sync.reconnectNow();
      if (this.projects.size > 0) this.uploader?.start();
      this.uploader?.wake();
    }
  }

  /** Wait until online, every open project caught up (with the changes of ours the server
   * acknowledged) and nothing waiting to be pushed. Throws what stops sync, or TimeoutError. */
  async waitSynced(timeoutMs?: number): Promise<SyncStatus> {
    this.check();
    const sync = this.sync;
    if (sync === null) throw new FieldsyncError("this client has no server URL: it never syncs");
    await this.waitFor(() => {
      if (sync.halted !== null) throw sync.halted;
      for (const project of this.projects.values()) if (project.error !== null) throw project.error;
      return (
        sync.state === "online" &&
        [...this.replicaMap].every(([id, r]) => sync.caughtUp(id, r) && r.pending.length === 0) &&
        sync.pushesInFlight() === 0
      );
    }, timeoutMs);
    return this.currentStatus;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    (globalThis as { removeEventListener?: (name: string, f: () => void) => void }).removeEventListener?.("online", this.onlineListener);
    await Promise.all([this.sync?.stop(), this.uploader?.stop()]);
    this.statuses.clear();
    for (const project of this.projects.values()) project.closeListeners();
    for (const tick of this.ticks.splice(0)) tick();
    await this.storage.close();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // --- what the sync loop and the projects call ----------------------------------------------

  replicas(): ReadonlyMap<string, ProjectReplica> {
    return this.replicaMap;
  }

  remoteChanged(event: RemoteChanges): void {
    this.projects.get(event.projectId)?.changes.emit(event);
  }

  conflictsChanged(update: ConflictUpdate): void {
    this.projects.get(update.projectId)?.conflictUpdates.emit(update);
  }

  changesRejected(projectId: string, ids: readonly number[]): void {
    void this.projects.get(projectId)?.reportRejected(ids);
    this.stateChanged();
  }

  projectError(projectId: string): ProjectUnavailable | null {
    return this.sync?.failed.get(projectId) ?? null;
  }

  localChange(projectId: string): void {
    this.sync?.outboxChanged(projectId);
    this.stateChanged();
  }

  stateChanged(): void {
    if (this.closed) return;
    for (const tick of this.ticks.splice(0)) tick();
    const status = this.computeStatus();
    if (status.connection === "online" && this.currentStatus.connection !== "online") this.uploader?.wake(); // the network is back
    if (!sameStatus(status, this.currentStatus)) {
      this.currentStatus = status;
      this.statuses.emit(status);
    }
  }

  /** A token for an HTTP request: the current one, or a fresh one from the token function. */
  async currentToken(): Promise<string> {
    const source = this.sync?.token ?? this.options.token;
    return typeof source === "string" ? source : source();
  }

  /** A GET to the server with the user's token (attachments' files); Offline when unreachable. */
  async httpGet(url: string): Promise<Response> {
    this.check();
    const fetcher = this.fetcher;
    if (this.sync === null || fetcher === undefined) throw new Offline("this client has no server URL");
    const token = await this.currentToken();
    try {
      return await fetcher(url, { headers: { Authorization: `Bearer ${token}` } });
    } catch (error) {
      throw new Offline(`the server cannot be reached: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  attached(): void {
    if (this.paused) return;
    this.uploader?.start();
    this.uploader?.wake();
  }

  uploadChanged(projectId: string, attachmentId: string): void {
    if (!this.closed) this.projects.get(projectId)?.attachmentUpdates.emit([attachmentId]);
  }

  private computeStatus(): SyncStatus {
    let pending = 0;
    let rejected = 0;
    let lastSyncedAt: number | null = null;
    for (const [id, replica] of this.replicaMap) {
      pending += replica.pending.length;
      rejected += replica.rejectedCount;
      const at = this.sync?.syncedAt.get(id) ?? replica.lastSyncedAt;
      if (at !== null && (lastSyncedAt === null || at > lastSyncedAt)) lastSyncedAt = at;
    }
    const sync = this.sync;
    if (sync === null) return { connection: "stopped", syncing: false, pending, rejected, lastSyncedAt, lastError: null, serverProblem: null };
    const catchingUp = [...this.replicaMap.keys()].some((id) => !sync.live.has(id) && !sync.failed.has(id));
    return {
      connection: sync.state,
      syncing: sync.state === "online" && (catchingUp || sync.pushesInFlight() > 0),
      pending,
      rejected,
      lastSyncedAt,
      lastError: sync.lastError,
      serverProblem: sync.serverProblem,
    };
  }

  private async waitFor(predicate: () => boolean, timeoutMs: number | undefined): Promise<void> {
    const deadline = timeoutMs === undefined ? Infinity : Date.now() + timeoutMs;
    while (!predicate()) {
      this.check();
      const left = deadline - Date.now();
      if (left <= 0) throw new TimeoutError(`not done within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = Number.isFinite(left) ? setTimeout(resolve, left) : undefined;
        this.ticks.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  check(): void {
    if (this.closed) throw new ClientClosed("the client is closed");
  }
}

export class TimeoutError extends FieldsyncError {}
