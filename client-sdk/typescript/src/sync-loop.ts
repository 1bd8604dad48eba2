/**
 * The sync loop: one WebSocket to the server, reconnected by itself, for every open project.
 *
 * The protocol lives in `ClientProtocol` (no I/O): the projects' streams, their ordering
 * rules, the pushes waiting for an answer. This module is its pump, the port of the Python
 * SDK's `sync_loop.py`: it writes the protocol's frames, feeds it what the server sends and
 * turns its events into storage and what the app sees. A connection says hello with every open project's
 * cursor. A project never bootstrapped first fetches its snapshot over HTTP and then
 * subscribes from the snapshot's cursor; if that fails (no CORS, an old server, a proxy),
 * it subscribes with no cursor and gets the snapshot over the WebSocket. Snapshots are
 * stored part by part and their cursor set at the end; logged changes are stored with the
 * new cursor in one write. The loop pushes the outbox, one push in flight per project, sized
 * by the limits the server announces. A push whose result never came is sent again on the
 * next connection: the server recognises changes by hash and logs each once.
 *
 * When the connection drops, the loop waits a backoff delay (full jitter) and tries again.
 * It stops trying only when the server refuses the token (until a new one) or speaks no
 * protocol version in common, or when the app pauses it.
 */
import { Backoff } from "./backoff.js";
import { ClientProtocol, type ClientEvent } from "./client-protocol.js";
import { maxServerFrameBytes } from "./codec/codec.js";
import { Conflict, type ConflictUpdate } from "./conflicts.js";
import { CLIENT_VERSION } from "./version.js";
import {
  AuthError,
  FieldsyncError,
  IncompatibleServer,
  MembershipRemoved,
  Offline,
  ProjectUnavailable,
  ProtocolError,
  ServerError,
} from "./errors.js";
import {
  CLOSE_CODES,
  type ChangeRecord,
  type ConflictRecord,
  type EntityResult,
  type Limits,
  type SnapshotEnd,
  type SnapshotEntity,
} from "./generated/protocol.js";
import { missingHashes, planPush, withAncestors, type EntityBatch, type Sendable } from "./push-plan.js";
import { changeOpCount, latest, RemoteDataError, type ProjectReplica, type RemoteOutcome } from "./replica.js";
import { SnapshotFormatError, SnapshotStream } from "./snapshot-stream.js";

export type ConnectionStatus = "connecting" | "online" | "offline" | "stopped";

/** The part of a WebSocket the SDK uses: the browser's `WebSocket` and Node's `ws` have it. */
export interface SocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** The server's `Retry-After` (ms) when it refused the upgrade, known before the close
   * event: Node's `ws` shows the refusal (`nodeWebSocket`); browsers hide it. */
  readonly retryAfterMs?: number;
}

/** Opens a WebSocket to `url`; the socket should accept frames of `maxBytes`. */
export type WebSocketFactory = (url: string, maxBytes: number) => SocketLike;

export type TokenSource = string | (() => string | Promise<string>);

export interface RemoteChanges {
  readonly projectId: string;
  readonly entityIds: ReadonlySet<string>;
  readonly cursor: number;
  /** True when they came from a (re)bootstrap. */
  readonly snapshot: boolean;
}

export interface SyncHost {
  replicas(): ReadonlyMap<string, ProjectReplica>;
  remoteChanged(event: RemoteChanges): void;
  conflictsChanged(update: ConflictUpdate): void;
  changesRejected(projectId: string, ids: readonly number[]): void;
  stateChanged(): void;
}

export interface SyncOptions {
  readonly url: string;
  readonly token: TokenSource;
  readonly clientId: string;
  readonly backoff: Backoff;
  readonly connectTimeoutMs: number;
  readonly limits: Limits;
  readonly versions: readonly number[];
  readonly httpSnapshots: boolean;
  readonly webSocket: WebSocketFactory;
  readonly fetch: typeof fetch | undefined;
}

const AUTH_CODES = new Set(["invalid_token", "token_expired"]);
const MAX_AUTH_RETRIES = 3; // refreshed tokens refused in a row before sync stops
const PART_ENTITIES = 500;
const PART_BYTES = 4 * 1024 * 1024;

/** The WebSocket endpoint for a server URL: http(s) becomes ws(s), an empty path `/sync`. */
export function syncUrl(url: string): string {
  const parsed = new URL(url);
  const scheme = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" }[parsed.protocol];
  if (scheme === undefined) throw new TypeError(`the server URL must start with ws://, wss://, http:// or https://: ${url}`);
  parsed.protocol = scheme;
  if (parsed.pathname === "" || parsed.pathname === "/") parsed.pathname = "/sync";
  parsed.hash = "";
  return parsed.toString();
}

/** An HTTP address next to a WebSocket endpoint: wss://h/x/sync and `/projects/p` give https://h/x/projects/p. */
export function httpUrl(endpoint: string, path: string): string {
  const parsed = new URL(endpoint);
  parsed.protocol = parsed.protocol === "wss:" ? "https:" : "http:";
  const base = parsed.pathname.replace(/\/$/u, "").replace(/\/sync$/u, "");
  parsed.pathname = `${base}${path}`;
  parsed.search = "";
  return parsed.toString();
}

/** The snapshot URL next to a WebSocket endpoint: wss://h/x/sync gives https://h/x/projects/{id}/snapshot. */
export function snapshotUrl(endpoint: string, projectId: string): string {
  return httpUrl(endpoint, `/projects/${encodeURIComponent(projectId)}/snapshot`);
}

function describe(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.length <= 200 ? text : `${text.slice(0, 200)}...`;
}

export class SyncLoop {
  state: ConnectionStatus = "stopped";
  lastError: FieldsyncError | null = null;
  halted: FieldsyncError | null = null;
  serverProblem: string | null = null;
  /** Who the server's last welcome said the token belongs to. */
  userId: string | null = null;
  readonly failed = new Map<string, ProjectUnavailable>();
  readonly syncedAt = new Map<string, number>();
  connections = 0;
  token: TokenSource;
  private session: Session | null = null;
  private running = false;
  private wake: (() => void) | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private idle = new Set<string>();
  private authFailures = 0;
  private loopDone: Promise<void> = Promise.resolve();

  constructor(readonly host: SyncHost, readonly options: SyncOptions) {
    this.token = options.token;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loopDone = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.session?.close(CLOSE_CODES.NORMAL, "client closing");
    this.reconnectNow();
    await this.loopDone;
    this.setState("stopped");
  }

  setToken(token: TokenSource): void {
    this.token = token;
    this.authFailures = 0;
    if (this.halted instanceof AuthError) this.halted = null;
    this.reconnectNow();
  }

  reconnectNow(): void {
    const wake = this.wake;
    this.wake = null;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    wake?.();
  }

  projectAdded(projectId: string): void {
    this.failed.delete(projectId);
    this.session?.subscribe(projectId);
  }

  outboxChanged(projectId: string): void {
    this.session?.push(projectId);
    void this.checkIdle();
  }

  pushesInFlight(): number {
    return this.session?.protocol.pushesInFlight() ?? 0;
  }

  private async run(): Promise<void> {
    let retryAfter = 0; // the server's hint when it refused the last upgrade (ms)
    while (this.running) {
      if (this.halted === null) {
        this.setState("connecting");
        this.connections += 1;
        retryAfter = 0;
        try {
          const token = typeof this.token === "string" ? this.token : await this.token();
          const session = (this.session = new Session(this, token));
          await session.run();
          retryAfter = session.retryAfterMs;
        } catch (error) {
          this.error(error instanceof FieldsyncError ? error : new FieldsyncError(`sync failed: ${describe(error)}`));
        } finally {
          this.session = null;
          this.idle.clear();
        }
        if (!this.running) break;
        if (this.halted === null) this.setState("offline");
      } else {
        this.setState("stopped");
      }
      const delay = this.halted === null ? this.options.backoff.nextDelay(retryAfter) : undefined;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        if (delay !== undefined) this.timer = setTimeout(() => this.reconnectNow(), delay);
      });
    }
  }

  setState(state: ConnectionStatus): void {
    if (state !== this.state) {
      this.state = state;
      this.host.stateChanged();
    }
  }

  error(error: FieldsyncError): void {
    this.lastError = error;
    this.host.stateChanged();
  }

  halt(error: FieldsyncError): void {
    this.halted = error;
    this.lastError = error;
    this.setState("stopped");
    this.host.stateChanged();
  }

  /** The token was refused: with a token callback, ask it again a few times first. */
  authRefused(error: AuthError): void {
    this.authFailures += 1;
    if (typeof this.token === "string" || this.authFailures > MAX_AUTH_RETRIES) this.halt(error);
    else this.error(error);
  }

  welcomed(userId: string | null = null): void {
    if (userId !== null) this.userId = userId;
    this.options.backoff.reset();
    this.authFailures = 0;
    this.lastError = null;
    this.serverProblem = null;
    this.setState("online");
  }

  /** The projects caught up on the current connection. */
  get live(): ReadonlySet<string> {
    return this.session?.protocol.liveProjects() ?? new Set();
  }

  caughtUp(projectId: string, replica: ProjectReplica): boolean {
    const protocol = this.session?.protocol;
    if (protocol === undefined || !protocol.liveProjects().has(projectId)) return false;
    return (replica.cursor ?? 0) >= protocol.acknowledgedSeq(projectId); // stored, not just received
  }

  pushing(projectId: string): boolean {
    return this.session?.protocol.pushing(projectId) ?? false;
  }

  /** Note the projects that are caught up with nothing waiting: they are synced now. */
  async checkIdle(): Promise<void> {
    const now = Date.now();
    for (const [projectId, replica] of this.host.replicas()) {
      const idle = this.caughtUp(projectId, replica) && !this.pushing(projectId) && replica.pending.length === 0;
      if (!idle) {
        this.idle.delete(projectId);
        continue;
      }
      this.syncedAt.set(projectId, now);
      if (!this.idle.has(projectId)) {
        this.idle.add(projectId); // persist transitions only, not every change
        await replica.run(() => replica.setLastSynced(now));
      }
    }
  }
}

/** One WebSocket connection, from hello until it closes: the pump between the socket, the
 * protocol (`ClientProtocol`) and the replicas. */
class Session {
  readonly protocol: ClientProtocol<EntityBatch>;
  /** Changes the server said it lacks, per project and entity, sent before the outbox. */
  private readonly repairs = new Map<string, Map<string, Sendable[]>>();
  /** What storing each WebSocket snapshot under way changed, reported at its end. */
  private readonly snapshots = new Map<string, RemoteOutcome>();
  private readonly retry: Backoff;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private socket: SocketLike | null = null;
  /** The server's retry hint when it refused this connection's upgrade (ms), else 0. */
  retryAfterMs = 0;
  private inbox: Uint8Array[] = [];
  private processing = false;
  private closed = false;
  private stopped = false; // what came could not be stored: nothing more is acted on
  private socketError: string | null = null;
  private finish: (() => void) | null = null;
  private readonly host: SyncHost;

  constructor(readonly loop: SyncLoop, readonly token: string) {
    this.host = loop.host;
    const { limits, httpSnapshots, fetch } = loop.options;
    this.protocol = new ClientProtocol<EntityBatch>(limits, httpSnapshots && fetch !== undefined);
    this.retry = new Backoff(loop.options.backoff.baseMs, loop.options.backoff.capMs);
  }

  async run(): Promise<void> {
    const { url, webSocket, connectTimeoutMs, limits } = this.loop.options;
    await new Promise<void>((resolve) => {
      this.finish = resolve;
      let socket: SocketLike;
      try {
        socket = webSocket(url, maxServerFrameBytes(limits));
      } catch (error) {
        this.loop.error(new Offline(`cannot reach the server at ${url}: ${describe(error)}`));
        resolve();
        return;
      }
      this.socket = socket;
      socket.binaryType = "arraybuffer";
      const timeout = setTimeout(() => {
        if (this.protocol.state === "awaiting_hello") {
          this.loop.error(new Offline(`no connection to ${url} within ${connectTimeoutMs} ms`));
          this.end();
        }
      }, connectTimeoutMs);
      socket.onopen = () => {
        clearTimeout(timeout);
        this.hello();
      };
      socket.onmessage = (event) => {
        const data = event.data;
        if (typeof data === "string") this.inbox.push(new TextEncoder().encode(data)); // refused by the decoder
        else if (data instanceof ArrayBuffer) this.inbox.push(new Uint8Array(data));
        else if (ArrayBuffer.isView(data)) this.inbox.push(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        void this.process(typeof data === "string");
      };
      // The close event follows; Node's ws says why here (a frame over maxBytes), browsers do not.
      socket.onerror = (event) => {
        const detail = (event as { message?: unknown }).message;
        if (typeof detail === "string" && detail) this.socketError = detail;
      };
      socket.onclose = (event) => {
        clearTimeout(timeout);
        this.retryAfterMs = socket.retryAfterMs ?? 0;
        this.closedByServer(event.code, event.reason);
        this.end();
      };
    });
  }

  private hello(): void {
    const replicas = this.host.replicas();
    let oldest: number | null = null;
    for (const replica of replicas.values()) {
      for (const row of replica.pending) oldest = oldest === null ? row.createdAt : Math.min(oldest, row.createdAt);
    }
    const projects = [...replicas].map(([id, r]) => ({ project_id: id, cursor: r.cursor }));
    this.protocol.hello(this.token, this.loop.options.clientId, projects, oldest === null ? null : Math.max(0, Date.now() - oldest), this.loop.options.versions, CLIENT_VERSION);
    this.flush();
  }

  private flush(): void {
    const socket = this.socket;
    if (socket === null) return;
    for (const frame of this.protocol.dataToSend()) {
      try {
        socket.send(frame);
      } catch {
        break; // the close event follows
      }
    }
    if (this.protocol.closeRequested !== null && !this.closed) {
      const [code, reason] = this.protocol.closeRequested;
      this.close(code, reason);
    }
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.protocol.close(code, reason);
    try {
      this.socket?.close(code === CLOSE_CODES.NORMAL || code >= 3000 ? code : CLOSE_CODES.NORMAL, reason);
    } catch {
      // already closed
    }
    // Browsers fire close only after the closing handshake; do not wait for a dead peer.
    this.later(() => this.end(), 2000);
  }

  private end(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.protocol.connectionClosed();
    if (this.socket !== null) {
      this.socket.onmessage = null;
      this.socket.onclose = null;
      try {
        this.socket.close();
      } catch {
        // gone
      }
    }
    const finish = this.finish;
    this.finish = null;
    finish?.();
  }

  private closedByServer(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    if (code === CLOSE_CODES.UNAUTHORIZED && this.loop.halted === null) {
      this.loop.authRefused(new AuthError("invalid_token", reason || "token refused"));
    } else if (code === CLOSE_CODES.UNSUPPORTED_VERSION && this.loop.halted === null) {
      this.loop.halt(new IncompatibleServer("unsupported_version", reason));
    } else if (this.loop.lastError === null || this.loop.state === "online") {
      const why = this.socketError === null ? reason : `${this.socketError} ${reason}`;
      this.loop.error(new Offline(`the connection closed (code ${code}) ${why}`.trim()));
    }
  }

  /** Feed received frames to the protocol one at a time and act on what it says, in order
   * (handlers write to storage); events from the app's intents are taken here too. */
  private async process(textFrame = false): Promise<void> {
    if (textFrame) {
      this.protocol.receiveFrame("text frame");
      this.inbox = [];
    }
    if (this.processing) return;
    this.processing = true;
    try {
      // Events the protocol has already produced are acted on even once the connection is
      // closing (a fatal error, a protocol failure); no frame is fed to it after that.
      while (!this.stopped) {
        let events = this.protocol.eventsReceived();
        if (events.length === 0) {
          const frame = this.closed ? undefined : this.inbox.shift();
          if (frame === undefined) break;
          this.protocol.receiveFrame(frame);
          events = this.protocol.eventsReceived();
        }
        for (const event of events) {
          try {
            await this.handle(event);
          } catch (error) {
            if (error instanceof RemoteDataError) this.fail(error.message);
            else this.fail(`sync failed: ${describe(error)}`);
          }
          if (this.stopped) break;
        }
        this.flush();
        await this.loop.checkIdle();
        this.host.stateChanged();
      }
    } finally {
      this.processing = false;
    }
    this.flush();
  }

  /** What came cannot be stored: drop the connection and resume from the stored cursor
   * (what the protocol says next is no longer acted on). */
  private fail(message: string): void {
    this.stopped = true;
    this.loop.error(new FieldsyncError(message));
    this.close(CLOSE_CODES.NORMAL, "resuming from the stored cursor");
  }

  private replica(projectId: string): ProjectReplica | undefined {
    return this.host.replicas().get(projectId);
  }

  private async handle(event: ClientEvent<EntityBatch>): Promise<void> {
    switch (event.type) {
      case "welcomed":
        this.loop.welcomed(event.welcome.user_id);
        for (const projectId of this.host.replicas().keys()) this.push(projectId);
        return;
      case "snapshot_wanted": return this.fetch(event.projectId);
      case "snapshot_started":
        this.snapshots.set(event.projectId, { changed: new Set(), rejected: [] });
        return;
      case "snapshot_entities": return this.snapshotEntities(event.projectId, event.entities);
      case "snapshot_finished": return this.snapshotFinished(event.projectId, event.cursor, event.conflicts);
      case "changes_received": return this.changes(event.projectId, event.changes);
      case "conflicts_changed": return this.conflicts(event.projectId, event.conflicts);
      case "project_live":
        if (this.loop.failed.delete(event.projectId)) this.push(event.projectId); // its outbox waited
        return;
      case "cursor_ahead":
        // The server's log is behind our cursor (restored from a backup?): the protocol asked
        // for a snapshot, which is merged with what we hold.
        this.snapshots.delete(event.projectId);
        return;
      case "project_failed": return this.projectFailed(event.projectId, event.code, event.message);
      case "push_answered": return this.pushAnswered(event.projectId, event.answers);
      case "push_refused": return this.pushRefused(event);
      case "error_received":
        if (AUTH_CODES.has(event.code)) this.loop.authRefused(new AuthError(event.code, event.message));
        else if (event.code === "unsupported_version") this.loop.halt(new IncompatibleServer(event.code, event.message));
        else this.loop.error(new ServerError(event.code, event.message));
        return;
      case "server_status":
        this.loop.serverProblem = event.problem;
        return;
      case "protocol_failure":
        this.loop.error(new ProtocolError(event.code, `the server broke the protocol: ${event.message}`));
        return;
    }
  }

  private async snapshotEntities(projectId: string, entities: readonly SnapshotEntity[]): Promise<void> {
    const outcome = this.snapshots.get(projectId);
    const replica = this.replica(projectId);
    if (outcome === undefined || replica === undefined) return;
    const part = await replica.run(() => replica.storeSnapshotPart(entities));
    for (const id of part.changed) outcome.changed.add(id);
    outcome.rejected.push(...part.rejected);
  }

  private async snapshotFinished(projectId: string, cursor: number, conflicts: readonly ConflictRecord[]): Promise<void> {
    const outcome = this.snapshots.get(projectId);
    this.snapshots.delete(projectId);
    const replica = this.replica(projectId);
    if (outcome === undefined || replica === undefined) return;
    const removed = await replica.run(() => replica.finishSnapshot(cursor, conflicts));
    this.report(projectId, outcome, cursor, true);
    this.snapshotConflictsDone(projectId, conflicts, removed);
  }

  private snapshotConflictsDone(projectId: string, records: readonly ConflictRecord[], removed: readonly string[]): void {
    const kept = latest(records).filter((r) => r.status !== "removed");
    this.host.conflictsChanged({ projectId, changed: kept.map((r) => new Conflict(r)), removed, snapshot: true });
  }

  private async conflicts(projectId: string, records: readonly ConflictRecord[]): Promise<void> {
    const replica = this.replica(projectId);
    if (replica === undefined) return;
    const removed = await replica.run(() => replica.applyConflicts(records));
    const kept = latest(records).filter((r) => r.status !== "removed");
    if (kept.length || removed.length) {
      this.host.conflictsChanged({ projectId, changed: kept.map((r) => new Conflict(r)), removed, snapshot: false });
    }
  }

  private async changes(projectId: string, changes: readonly ChangeRecord[]): Promise<void> {
    const replica = this.replica(projectId);
    if (replica === undefined) return;
    const outcome = await replica.run(() => replica.applyRemote(changes));
    this.report(projectId, outcome, replica.cursor ?? 0, false);
  }

  private report(projectId: string, outcome: RemoteOutcome, cursor: number, snapshot: boolean): void {
    if (outcome.rejected.length) this.host.changesRejected(projectId, outcome.rejected);
    if (outcome.changed.size) this.host.remoteChanged({ projectId, entityIds: outcome.changed, cursor, snapshot });
  }

  private async projectFailed(projectId: string, code: string, message: string): Promise<void> {
    this.snapshots.delete(projectId);
    if (this.replica(projectId) === undefined) return;
    if (code === "membership_removed") await this.membershipRemoved(projectId, message);
    else if (code === "project_unavailable") this.projectUnavailable(projectId, new ProjectUnavailable(projectId, code, message));
    else {
      // server_unavailable, or a code from a newer server: try again later
      this.loop.error(new ServerError(code, message));
      this.later(() => this.subscribe(projectId));
    }
  }

  private projectUnavailable(projectId: string, failure: ProjectUnavailable): void {
    this.loop.failed.set(projectId, failure);
    this.loop.error(failure);
  }

  // --- what the app wants ---------------------------------------------------------------------

  subscribe(projectId: string): void {
    const replica = this.host.replicas().get(projectId);
    if (replica === undefined) return;
    this.protocol.subscribe(projectId, replica.cursor);
    void this.process();
  }

  private fetch(projectId: string): void {
    const replica = this.replica(projectId);
    if (replica === undefined) this.protocol.unsubscribe(projectId); // closed meanwhile
    else void this.httpBootstrap(projectId, replica);
  }

  /** Store the project's HTTP snapshot, then let the protocol subscribe from its cursor (or,
   * if it could not be had, ask for it over the WebSocket). */
  private async httpBootstrap(projectId: string, replica: ProjectReplica): Promise<void> {
    try {
      const outcome: RemoteOutcome = { changed: new Set(), rejected: [] };
      const [end, conflicts] = await this.download(projectId, replica, outcome);
      const removed = await replica.run(() => replica.finishSnapshot(end.cursor, conflicts));
      this.report(projectId, outcome, end.cursor, true);
      this.snapshotConflictsDone(projectId, conflicts, removed);
      this.protocol.snapshotFetched(projectId, end.cursor);
    } catch {
      // No CORS for this page, an older server, a proxy, a broken body: whatever it was,
      // the WebSocket snapshot comes next and reports problems the usual way.
      this.protocol.snapshotFetchFailed(projectId);
    }
    if (this.closed) return;
    void this.process();
    this.host.stateChanged();
  }

  private async download(projectId: string, replica: ProjectReplica, outcome: RemoteOutcome): Promise<[SnapshotEnd, ConflictRecord[]]> {
    const url = snapshotUrl(this.loop.options.url, projectId);
    const controller = new AbortController();
    const idle = (): ReturnType<typeof setTimeout> => setTimeout(() => controller.abort(), this.loop.options.connectTimeoutMs);
    let timer = idle();
    try {
      const response = await this.loop.options.fetch!(url, { headers: { Authorization: `Bearer ${this.token}` }, signal: controller.signal });
      if (response.status !== 200 || response.body === null) throw new SnapshotFormatError(`GET ${url} answered ${response.status}`);
      const stream = new SnapshotStream(projectId, this.loop.options.limits);
      const conflicts: ConflictRecord[] = [];
      let part: Parameters<ProjectReplica["storeSnapshotPart"]>[0][number][] = [];
      let size = 0;
      const store = async (): Promise<void> => {
        const entities = part;
        part = [];
        size = 0;
        const stored = await replica.run(() => replica.storeSnapshotPart(entities));
        for (const id of stored.changed) outcome.changed.add(id);
        outcome.rejected.push(...stored.rejected);
      };
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        clearTimeout(timer);
        timer = idle();
        if (done) break;
        if (this.closed) throw new SnapshotFormatError("the connection closed");
        for (const record of stream.feed(value)) {
          if (record.t === "conflicts") conflicts.push(...record.conflicts);
          else if (record.t === undefined) {
            part.push(record);
            size += record.document.length;
            if (part.length >= PART_ENTITIES || size >= PART_BYTES) await store();
          }
        }
      }
      const end = stream.finish();
      if (part.length) await store();
      return [end, conflicts];
    } finally {
      clearTimeout(timer);
    }
  }

  private later(action: () => void, delay = this.retry.nextDelay()): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      action();
      this.flush();
    }, delay);
    this.timers.add(timer);
  }

  /** Send the project's oldest pending changes, unless a push of it is in flight. */
  push(projectId: string): void {
    if (!this.protocol.open || this.protocol.pushing(projectId)) return;
    const replica = this.host.replicas().get(projectId);
    if (this.loop.failed.has(projectId) || replica === undefined) return;
    const repairs = this.repairs.get(projectId);
    const pending: Sendable[] = [...(repairs ? [...repairs.values()].flat() : []), ...replica.pending];
    if (pending.length === 0) return;
    const budget = this.protocol.pushBudget();
    const batches = planPush(pending, budget.maxEntities, budget.maxChangesPerEntity, budget.maxBytes, budget.maxOps, changeOpCount);
    this.protocol.push(projectId, batches);
    this.flush();
  }

  private async pushAnswered(projectId: string, answers: readonly (readonly [EntityBatch, EntityResult])[]): Promise<void> {
    const replica = this.host.replicas().get(projectId);
    if (replica === undefined) return;
    const acknowledged: number[] = [];
    const rejected: number[] = [];
    for (const [batch, entity] of answers) {
      const ids = batch.entries.filter((e) => e.id !== 0).map((e) => e.id);
      if (entity.ok) {
        acknowledged.push(...ids);
        this.repaired(projectId, batch);
      } else if (entity.code === "missing_dependencies" && (await this.repair(projectId, replica, batch, entity.details))) {
        continue; // its changes stay pending; the next push brings what was missing
      } else {
        this.repairs.get(projectId)?.delete(entity.entity_id);
        rejected.push(...(await replica.run(() => replica.reject(entity.entity_id, ids, entity.code, entity.message, entity.details))));
      }
    }
    if (acknowledged.length) await replica.run(() => replica.acknowledge(acknowledged));
    if (rejected.length) this.host.changesRejected(projectId, rejected);
    this.push(projectId);
  }

  /** Plan to send the changes the server lacks, with everything they build on; false when
   * that cannot help (the local document lacks them, or they were in this very push). */
  private async repair(projectId: string, replica: ProjectReplica, batch: EntityBatch, details: Record<string, unknown>): Promise<boolean> {
    const missing = missingHashes(details);
    if (missing === null || batch.entries.some((e) => missing.has(e.hash))) return false;
    const history = withAncestors(await replica.history(batch.entityId), missing);
    if (history === null) return false;
    const pending = new Set(replica.pending.filter((p) => p.entityId === batch.entityId).map((p) => p.hash));
    const entries = history
      .filter((c) => !pending.has(c.hash))
      .map((c) => ({ id: 0, entityType: batch.entityType, entityId: batch.entityId, change: c.change, hash: c.hash }));
    let repairs = this.repairs.get(projectId);
    if (!repairs) this.repairs.set(projectId, (repairs = new Map()));
    repairs.set(batch.entityId, entries);
    return true;
  }

  private repaired(projectId: string, batch: EntityBatch): void {
    const repairs = this.repairs.get(projectId);
    const planned = repairs?.get(batch.entityId);
    if (!repairs || !planned) return;
    const sent = new Set(batch.entries.filter((e) => e.id === 0).map((e) => e.hash));
    const left = planned.filter((e) => !sent.has(e.hash));
    if (left.length) repairs.set(batch.entityId, left);
    else repairs.delete(batch.entityId);
  }

  /** Removed from the project: stop syncing it and reject its outbox, which the server will
   * never log. Changes in a push still in flight wait for that push's answer. */
  private async membershipRemoved(projectId: string, message: string): Promise<void> {
    const failure = new MembershipRemoved(projectId, "membership_removed", message);
    this.protocol.unsubscribe(projectId); // after a refused push it may still stream
    this.snapshots.delete(projectId);
    this.loop.failed.set(projectId, failure);
    const replica = this.host.replicas().get(projectId);
    if (replica !== undefined) {
      const flying = new Set(this.protocol.inFlight(projectId).flatMap((b) => b.entries.map((e) => e.id)));
      const byEntity = new Map<string, number[]>();
      for (const row of replica.pending) {
        if (flying.has(row.id)) continue;
        byEntity.set(row.entityId, [...(byEntity.get(row.entityId) ?? []), row.id]);
      }
      const rejected: number[] = [];
      for (const [entityId, ids] of byEntity) rejected.push(...(await replica.run(() => replica.reject(entityId, ids, "membership_removed", message, {}))));
      if (rejected.length) this.host.changesRejected(projectId, rejected);
    }
    this.loop.error(failure);
  }

  /** The whole push was refused before any entity was looked at. */
  private async pushRefused(refused: Extract<ClientEvent<EntityBatch>, { type: "push_refused" }>): Promise<void> {
    const projectId = refused.projectId;
    const replica = this.host.replicas().get(projectId);
    if (replica === undefined) return;
    if (refused.retry) {
      this.loop.error(new ServerError(refused.code, refused.message));
      this.later(() => this.push(projectId));
    } else if (refused.code === "membership_removed") {
      await this.membershipRemoved(projectId, refused.message);
    } else if (refused.code === "project_unavailable") {
      this.projectUnavailable(projectId, new ProjectUnavailable(projectId, refused.code, refused.message));
    } else if (refused.split) {
      this.push(projectId); // the protocol cut the budget
    } else {
      // forbidden, or a push the server cannot take at all: never retried
      const rejected: number[] = [];
      for (const batch of refused.carried) {
        const ids = batch.entries.filter((e) => e.id !== 0).map((e) => e.id);
        rejected.push(...(await replica.run(() => replica.reject(batch.entityId, ids, refused.code, refused.message, {}))));
      }
      this.loop.error(new ServerError(refused.code, refused.message));
      if (rejected.length) this.host.changesRejected(projectId, rejected);
    }
  }
}
