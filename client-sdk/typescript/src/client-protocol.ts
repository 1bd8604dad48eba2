/**
 * The client's side of the sync protocol as one object without I/O: the port of
 * `sync/client_protocol.py` (`ClientProtocol`), with the same states, events and rules.
 *
 * `ClientConnection` owns the handshake and the decoding of server frames; `ClientProtocol`
 * wraps it and owns everything after `welcome`: each project's stream, the pushes waiting for
 * their answer, and the order in which the server's messages may come. The shell (the sync
 * loop) pumps: it feeds frames in, writes what `dataToSend()` returns and acts on
 * `eventsReceived()` with its storage; the app's intents (subscribe, unsubscribe, push, an
 * HTTP snapshot stored) go in as method calls. After any call, drain both.
 *
 *   queued --welcome--> subscribing --snapshot_begin--> snapshot --snapshot_end--> catching_up
 *   queued --welcome (no cursor, HTTP)--> fetching --snapshotFetched/Failed--> subscribing
 *   subscribing --changes--> catching_up --synced--> live
 *   any --project_error / unsubscribe--> gone; project_error cursor_ahead --> subscribing (no cursor)
 *
 * The server's messages must keep these rules (`docs/protocol.md`); breaking one is a
 * `protocol_failure` event and a close with 1002 (reason `out_of_order`):
 * - a snapshot comes only for a subscription without a cursor, once: `snapshot_begin`, chunks
 *   with exactly the announced entities, its conflicts, `snapshot_end` at the same cursor;
 *   no `changes` or `synced` inside, no chunk or end outside;
 * - `changes` continue exactly at cursor + 1, each seq one more than the one before;
 * - a `conflicts` message outside a snapshot comes right before its `changes`;
 * - `synced` comes once, after the catch-up, at the cursor the client holds;
 * - a `push_result` names its push's project.
 * Messages for projects that are not subscribed, and answers to pushes not waiting for one,
 * are ignored (an `error` naming an unknown push is an ordinary `error_received`).
 */
import { ProtocolViolation } from "./codec/codec.js";
import { ClientConnection, InvalidStateError, type ConnectionState } from "./connection.js";
import {
  CLOSE_CODES,
  DECODER_BOUNDS,
  DEFAULT_LIMITS,
  PROTOCOL_VERSIONS,
  type ChangeRecord,
  type Changes,
  type ConflictRecord,
  type Conflicts,
  type EntityResult,
  type Error as ErrorMessage,
  type Limits,
  type ProjectCursor,
  type ProjectError,
  type PushResult,
  type ServerMessage,
  type SnapshotBegin,
  type SnapshotChunk,
  type SnapshotEnd,
  type SnapshotEntity,
  type Synced,
  type Welcome,
} from "./generated/protocol.js";

export const OUT_OF_ORDER = "out_of_order";
/** Push refusals that store nothing and pass: send the same push again later. */
export const RETRYABLE_PUSH_CODES: ReadonlySet<string> = new Set(["server_unavailable", "internal_error", "rate_limited"]);
/** Push refusals that ask for a smaller push. */
export const SPLIT_PUSH_CODES: ReadonlySet<string> = new Set(["too_many_entities", "frame_too_large"]);

/** What a push carries for one entity: the shell's own record, so the answer brings it back. */
export interface PushEntity {
  readonly entityType: string;
  readonly entityId: string;
  readonly changes: readonly Uint8Array[];
}

export type ProjectState = "queued" | "fetching" | "subscribing" | "snapshot" | "catching_up" | "live";

export interface PushBudget {
  readonly maxEntities: number;
  readonly maxChangesPerEntity: number;
  readonly maxBytes: number;
  readonly maxOps: number;
}

export type ClientEvent<B extends PushEntity = PushEntity> =
  | { readonly type: "welcomed"; readonly welcome: Welcome; readonly limits: Limits }
  /** Fetch the snapshot over HTTP, store it, then call `snapshotFetched` (or `snapshotFetchFailed`). */
  | { readonly type: "snapshot_wanted"; readonly projectId: string }
  | { readonly type: "snapshot_started"; readonly projectId: string; readonly cursor: number; readonly entityCount: number }
  | { readonly type: "snapshot_entities"; readonly projectId: string; readonly entities: readonly SnapshotEntity[] }
  /** The project is at `cursor`; `conflicts` (every record as of it) replace the stored ones. */
  | { readonly type: "snapshot_finished"; readonly projectId: string; readonly cursor: number; readonly conflicts: readonly ConflictRecord[] }
  | { readonly type: "changes_received"; readonly projectId: string; readonly changes: readonly ChangeRecord[]; readonly cursor: number }
  | { readonly type: "conflicts_changed"; readonly projectId: string; readonly conflicts: readonly ConflictRecord[] }
  | { readonly type: "project_live"; readonly projectId: string; readonly cursor: number }
  /** The server's log is behind our cursor: the protocol asked for a snapshot in its place. */
  | { readonly type: "cursor_ahead"; readonly projectId: string; readonly message: string }
  /** `project_error`: the stream has ended; subscribe again to retry. */
  | { readonly type: "project_failed"; readonly projectId: string; readonly code: string; readonly message: string }
  | { readonly type: "push_answered"; readonly pushId: number; readonly projectId: string; readonly carried: readonly B[]; readonly answers: readonly (readonly [B, EntityResult])[] }
  | {
      readonly type: "push_refused";
      readonly pushId: number;
      readonly projectId: string;
      readonly carried: readonly B[];
      readonly code: string;
      readonly message: string;
      readonly fatal: boolean;
      /** Send it again later. */
      readonly retry: boolean;
      /** Send it again now, smaller: the budget is cut already. */
      readonly split: boolean;
    }
  | { readonly type: "error_received"; readonly code: string; readonly message: string; readonly fatal: boolean }
  | { readonly type: "server_status"; readonly state: string; readonly code: string; readonly message: string; readonly problem: string | null }
  /** The server broke the protocol: the connection asks to close; reconnect from the stored cursors. */
  | { readonly type: "protocol_failure"; readonly code: string; readonly message: string };

export type ProtocolFailure = Extract<ClientEvent, { type: "protocol_failure" }>;

class OutOfOrder extends Error {}

interface Bracket {
  readonly cursor: number;
  readonly count: number;
  seen: number;
  readonly conflicts: ConflictRecord[];
}

interface Stream {
  state: ProjectState;
  cursor: number | null; // the last seq held; null: nothing yet (a snapshot is needed)
  snapshot: Bracket | null;
  conflictsPending: boolean; // a conflicts message waits for its changes
}

interface Flight<B> {
  readonly projectId: string;
  readonly carried: readonly B[];
}

const ON_THE_WIRE: ReadonlySet<ProjectState> = new Set(["subscribing", "snapshot", "catching_up", "live"]);

export class ClientProtocol<B extends PushEntity = PushEntity> {
  readonly connection: ClientConnection;
  serverLimits: Limits = DEFAULT_LIMITS;
  failure: ProtocolFailure | null = null;
  private readonly streams = new Map<string, Stream>();
  private readonly unsubscribeOnOpen: string[] = [];
  private readonly httpFailed = new Set<string>();
  private readonly flights = new Map<number, Flight<B>>();
  private readonly acknowledged = new Map<string, number>();
  private nextPushId = 1;
  private shrink = 1;
  private events: ClientEvent<B>[] = [];

  constructor(limits: Limits = DEFAULT_LIMITS, readonly httpSnapshots = false) {
    this.connection = new ClientConnection(limits);
  }

  // -- the connection --------------------------------------------------------------------------

  get state(): ConnectionState {
    return this.connection.state;
  }

  get open(): boolean {
    return this.connection.state === "open";
  }

  get closing(): boolean {
    return this.connection.state === "closing" || this.connection.state === "closed";
  }

  get closeRequested(): [number, string] | null {
    return this.connection.closeRequested;
  }

  /** Say hello with `projects` (and any subscribed before): up to the hello's limit of them;
   * the others, and those waiting for an HTTP snapshot, follow once the connection is open. */
  hello(token: string, clientId: string, projects: readonly ProjectCursor[], outboxAgeMs: number | null, versions: readonly number[] = PROTOCOL_VERSIONS, clientVersion: string | null = null): void {
    if (this.connection.state !== "awaiting_hello") throw new InvalidStateError(`hello() needs awaiting_hello, not ${this.state}`);
    for (const p of projects) this.subscribe(p.project_id, p.cursor);
    const named: ProjectCursor[] = [];
    for (const [projectId, stream] of this.streams) {
      if (named.length < DECODER_BOUNDS.max_hello_projects && !this.wantsHttp(projectId, stream.cursor)) {
        named.push({ project_id: projectId, cursor: stream.cursor });
        stream.state = "subscribing";
      }
    }
    this.connection.hello(token, clientId, named, outboxAgeMs, versions, clientVersion);
  }

  /** A frame from the server; what it means comes out of `eventsReceived`. Never throws. */
  receiveFrame(frame: Uint8Array | string): void {
    if (this.closing) return;
    this.connection.receiveFrame(frame);
    for (const message of this.connection.eventsReceived()) {
      try {
        this.receive(message);
      } catch (error) {
        if (!(error instanceof OutOfOrder)) throw error;
        this.fail({ type: "protocol_failure", code: OUT_OF_ORDER, message: error.message });
        this.connection.close(CLOSE_CODES.PROTOCOL_ERROR, OUT_OF_ORDER);
        return;
      }
    }
    const violation: ProtocolViolation | null = this.connection.failure;
    if (violation !== null && this.failure === null) this.fail({ type: "protocol_failure", code: violation.code, message: violation.message });
  }

  dataToSend(): Uint8Array[] {
    return this.connection.dataToSend();
  }

  eventsReceived(): ClientEvent<B>[] {
    const events = this.events;
    this.events = [];
    return events;
  }

  /** Ask the shell to close (e.g. it could not store what came). */
  close(code: number = CLOSE_CODES.NORMAL, reason = ""): void {
    this.connection.close(code, reason);
  }

  connectionClosed(): void {
    this.connection.connectionClosed();
  }

  // -- projects --------------------------------------------------------------------------------

  /** Sync the project from `cursor` (null: nothing held, a snapshot first); ignored while it
   * is subscribed, or waiting for its HTTP snapshot, already. */
  subscribe(projectId: string, cursor: number | null): void {
    if (this.closing || this.streams.has(projectId)) return;
    if (!this.open) {
      this.streams.set(projectId, { state: "queued", cursor, snapshot: null, conflictsPending: false });
      return;
    }
    this.start(projectId, cursor);
  }

  /** Stop syncing the project; whatever of it is still on its way is ignored. */
  unsubscribe(projectId: string): void {
    this.acknowledged.delete(projectId);
    const stream = this.streams.get(projectId);
    this.streams.delete(projectId);
    if (stream === undefined || !ON_THE_WIRE.has(stream.state) || this.closing) return;
    if (this.open) this.connection.send({ t: "unsubscribe", project_id: projectId });
    else this.unsubscribeOnOpen.push(projectId); // named in the hello; not answered yet
  }

  /** The HTTP snapshot is stored at `cursor`: subscribe from there. */
  snapshotFetched(projectId: string, cursor: number): void {
    if (this.fetching(projectId)) {
      this.streams.delete(projectId);
      this.start(projectId, cursor);
    }
  }

  /** No HTTP snapshot: it comes over the WebSocket (for the rest of this connection). */
  snapshotFetchFailed(projectId: string): void {
    this.httpFailed.add(projectId);
    if (this.fetching(projectId)) {
      this.streams.delete(projectId);
      this.start(projectId, null);
    }
  }

  projectState(projectId: string): ProjectState | null {
    return this.streams.get(projectId)?.state ?? null;
  }

  cursor(projectId: string): number | null {
    return this.streams.get(projectId)?.cursor ?? null;
  }

  /** The projects caught up on this connection (none once it is closing). */
  liveProjects(): ReadonlySet<string> {
    const live = new Set<string>();
    if (!this.open) return live;
    for (const [projectId, stream] of this.streams) if (stream.state === "live") live.add(projectId);
    return live;
  }

  // -- pushes ----------------------------------------------------------------------------------

  /** Send the entities' changes; the push id, or null once the connection is closing. */
  push(projectId: string, entities: readonly B[]): number | null {
    if (this.closing) return null;
    if (!this.open) throw new InvalidStateError(`push() needs open, not ${this.state}`);
    if (new Set(entities.map((e) => e.entityId)).size !== entities.length) throw new RangeError("a push names each entity once");
    const pushId = this.nextPushId++;
    this.connection.send({
      t: "push",
      push_id: pushId,
      project_id: projectId,
      entities: entities.map((e) => ({ entity_type: e.entityType, entity_id: e.entityId, changes: [...e.changes] })),
    });
    this.flights.set(pushId, { projectId, carried: [...entities] });
    return pushId;
  }

  pushing(projectId: string): boolean {
    for (const flight of this.flights.values()) if (flight.projectId === projectId) return true;
    return false;
  }

  pushesInFlight(): number {
    return this.flights.size;
  }

  /** What the project's pushes waiting for an answer carry. */
  inFlight(projectId: string): B[] {
    return [...this.flights.values()].filter((f) => f.projectId === projectId).flatMap((f) => f.carried);
  }

  pushBudget(): PushBudget {
    const limits = this.serverLimits;
    const cut = (value: number): number => Math.max(1, Math.floor(value / this.shrink));
    return {
      maxEntities: cut(limits.max_entities_per_batch),
      maxChangesPerEntity: cut(limits.max_changes_per_entity),
      maxBytes: cut(limits.max_frame_bytes),
      maxOps: cut(limits.max_ops_per_push),
    };
  }

  /** The highest seq the server gave a change of ours in the project, on this connection. */
  acknowledgedSeq(projectId: string): number {
    return this.acknowledged.get(projectId) ?? 0;
  }

  // -- inside ----------------------------------------------------------------------------------

  private wantsHttp(projectId: string, cursor: number | null): boolean {
    return this.httpSnapshots && cursor === null && !this.httpFailed.has(projectId);
  }

  private fetching(projectId: string): boolean {
    return this.streams.get(projectId)?.state === "fetching" && !this.closing;
  }

  private start(projectId: string, cursor: number | null): void {
    if (this.wantsHttp(projectId, cursor)) {
      this.streams.set(projectId, { state: "fetching", cursor: null, snapshot: null, conflictsPending: false });
      this.events.push({ type: "snapshot_wanted", projectId });
      return;
    }
    this.streams.set(projectId, { state: "subscribing", cursor, snapshot: null, conflictsPending: false });
    this.connection.send({ t: "subscribe", project: { project_id: projectId, cursor } });
  }

  private fail(failure: ProtocolFailure): void {
    this.failure = failure;
    this.events.push(failure);
  }

  private receive(message: ServerMessage): void {
    switch (message.t) {
      case "welcome": return this.welcome(message);
      case "push_result": return this.pushResult(message);
      case "error": return this.error(message);
      case "status":
        this.events.push({ type: "server_status", state: message.state, code: message.code, message: message.message, problem: message.state === "ok" ? null : message.code || "degraded" });
        return;
    }
    const stream = this.streams.get(message.project_id);
    if (stream === undefined || !ON_THE_WIRE.has(stream.state)) return; // not subscribed: it was on its way
    switch (message.t) {
      case "snapshot_begin": return this.snapshotBegin(stream, message);
      case "snapshot_chunk": return this.snapshotChunk(stream, message);
      case "snapshot_end": return this.snapshotEnd(stream, message);
      case "conflicts": return this.conflicts(stream, message);
      case "changes": return this.changes(stream, message);
      case "synced": return this.synced(stream, message);
      case "project_error": return this.projectError(message);
    }
  }

  private welcome(welcome: Welcome): void {
    const announced = Object.fromEntries(Object.entries(welcome.limits).filter(([k, v]) => k in DEFAULT_LIMITS && v > 0));
    this.serverLimits = { ...DEFAULT_LIMITS, ...announced };
    this.events.push({ type: "welcomed", welcome, limits: this.serverLimits });
    for (const projectId of this.unsubscribeOnOpen) this.connection.send({ t: "unsubscribe", project_id: projectId });
    this.unsubscribeOnOpen.length = 0;
    for (const [projectId, stream] of [...this.streams]) {
      if (stream.state !== "queued") continue;
      this.streams.delete(projectId);
      this.start(projectId, stream.cursor);
    }
  }

  private snapshotBegin(stream: Stream, begin: SnapshotBegin): void {
    if (stream.state !== "subscribing" || stream.cursor !== null) {
      throw new OutOfOrder(`snapshot_begin of ${begin.project_id} in ${stream.state}${stream.cursor !== null ? ` from cursor ${stream.cursor}` : ""}`);
    }
    stream.state = "snapshot";
    stream.snapshot = { cursor: begin.cursor, count: begin.entity_count, seen: 0, conflicts: [] };
    this.events.push({ type: "snapshot_started", projectId: begin.project_id, cursor: begin.cursor, entityCount: begin.entity_count });
  }

  private bracket(stream: Stream, what: string, projectId: string): Bracket {
    if (stream.snapshot === null) throw new OutOfOrder(`${what} of ${projectId} outside a snapshot`);
    return stream.snapshot;
  }

  private snapshotChunk(stream: Stream, chunk: SnapshotChunk): void {
    const bracket = this.bracket(stream, "snapshot_chunk", chunk.project_id);
    if (bracket.conflicts.length) throw new OutOfOrder(`snapshot_chunk of ${chunk.project_id} after its conflicts`);
    bracket.seen += chunk.entities.length;
    if (bracket.seen > bracket.count) throw new OutOfOrder(`the snapshot of ${chunk.project_id} announced ${bracket.count} entities, its chunks hold more`);
    this.events.push({ type: "snapshot_entities", projectId: chunk.project_id, entities: chunk.entities });
  }

  private snapshotEnd(stream: Stream, end: SnapshotEnd): void {
    const bracket = this.bracket(stream, "snapshot_end", end.project_id);
    if (end.cursor !== bracket.cursor) throw new OutOfOrder(`the snapshot of ${end.project_id} began at cursor ${bracket.cursor} and ended at ${end.cursor}`);
    if (bracket.seen !== bracket.count) throw new OutOfOrder(`the snapshot of ${end.project_id} announced ${bracket.count} entities and ended after ${bracket.seen}`);
    stream.state = "catching_up";
    stream.cursor = end.cursor;
    stream.snapshot = null;
    this.events.push({ type: "snapshot_finished", projectId: end.project_id, cursor: end.cursor, conflicts: bracket.conflicts });
  }

  private conflicts(stream: Stream, message: Conflicts): void {
    if (stream.snapshot !== null) {
      stream.snapshot.conflicts.push(...message.conflicts); // stored with the snapshot
      return;
    }
    if (stream.cursor === null) throw new OutOfOrder(`conflicts of ${message.project_id} before its snapshot`);
    stream.conflictsPending = true;
    this.events.push({ type: "conflicts_changed", projectId: message.project_id, conflicts: message.conflicts });
  }

  private changes(stream: Stream, message: Changes): void {
    const projectId = message.project_id;
    if (stream.snapshot !== null) throw new OutOfOrder(`changes of ${projectId} in the middle of a snapshot`);
    if (stream.cursor === null) throw new OutOfOrder(`changes of ${projectId} before its snapshot`);
    if (message.changes.length === 0) return;
    const expected = stream.cursor + 1;
    message.changes.forEach((record, offset) => {
      if (record.seq !== expected + offset) throw new OutOfOrder(`changes of ${projectId}: expected seq ${expected + offset}, got ${record.seq}`);
    });
    const cursor = message.changes[message.changes.length - 1]!.seq;
    stream.cursor = cursor;
    stream.conflictsPending = false;
    if (stream.state === "subscribing") stream.state = "catching_up";
    this.events.push({ type: "changes_received", projectId, changes: message.changes, cursor });
  }

  private synced(stream: Stream, synced: Synced): void {
    const projectId = synced.project_id;
    if (stream.state === "live") throw new OutOfOrder(`a second synced for ${projectId}`);
    if (stream.snapshot !== null || stream.cursor === null) throw new OutOfOrder(`synced for ${projectId} before its snapshot ended`);
    if (stream.conflictsPending) throw new OutOfOrder(`synced for ${projectId} between conflicts and their changes`);
    if (synced.cursor !== stream.cursor) throw new OutOfOrder(`the server says we hold seq ${synced.cursor} of ${projectId}, we hold ${stream.cursor}`);
    stream.state = "live";
    this.events.push({ type: "project_live", projectId, cursor: stream.cursor });
  }

  private projectError(error: ProjectError): void {
    const projectId = error.project_id;
    if (error.code === "cursor_ahead") {
      // The log is behind our cursor: start again from a snapshot over the WebSocket.
      this.acknowledged.delete(projectId);
      this.streams.set(projectId, { state: "subscribing", cursor: null, snapshot: null, conflictsPending: false });
      this.connection.send({ t: "subscribe", project: { project_id: projectId, cursor: null } });
      this.events.push({ type: "cursor_ahead", projectId, message: error.message });
      return;
    }
    this.streams.delete(projectId);
    this.events.push({ type: "project_failed", projectId, code: error.code, message: error.message });
  }

  private pushResult(result: PushResult): void {
    const flight = this.flights.get(result.push_id);
    if (flight === undefined) return; // not ours, or answered already
    if (result.project_id !== flight.projectId) throw new OutOfOrder(`push ${result.push_id} was for ${flight.projectId}, its result names ${result.project_id}`);
    this.flights.delete(result.push_id);
    const unanswered = new Map(flight.carried.map((e) => [e.entityId, e]));
    const answers: (readonly [B, EntityResult])[] = [];
    for (const entity of result.results) {
      const carried = unanswered.get(entity.entity_id);
      if (carried === undefined) continue; // not in this push, or answered twice
      unanswered.delete(entity.entity_id);
      answers.push([carried, entity]);
      if (entity.ok && entity.seqs.length) this.acknowledged.set(flight.projectId, Math.max(this.acknowledgedSeq(flight.projectId), ...entity.seqs));
    }
    this.shrink = 1;
    this.events.push({ type: "push_answered", pushId: result.push_id, projectId: flight.projectId, carried: flight.carried, answers });
  }

  private error(error: ErrorMessage): void {
    const flight = error.push_id === null ? undefined : this.flights.get(error.push_id);
    if (flight === undefined || error.push_id === null) {
      this.events.push({ type: "error_received", code: error.code, message: error.message, fatal: error.fatal });
      return;
    }
    this.flights.delete(error.push_id);
    const changes = flight.carried.reduce((n, e) => n + e.changes.length, 0);
    const split = SPLIT_PUSH_CODES.has(error.code) && changes > 1;
    if (split) this.shrink *= 2;
    this.events.push({
      type: "push_refused",
      pushId: error.push_id,
      projectId: flight.projectId,
      carried: flight.carried,
      code: error.code,
      message: error.message,
      fatal: error.fatal,
      retry: RETRYABLE_PUSH_CODES.has(error.code),
      split,
    });
  }
}
