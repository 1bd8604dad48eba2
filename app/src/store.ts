/**
 * The app's view of one project: the SDK client and project, every entity as plain values
 * (kept current from the SDK's change events and the app's own edits), conflicts, refused
 * changes, the sync status and the members' health. Views read it and re-render when
 * `version` moves.
 */
import {
  ENTITY_TYPES,
  FieldsyncClient,
  type Activity,
  type Conflict,
  type EntityType,
  type EntityTypes,
  type Location,
  type Membership,
  type Plan,
  type Project,
  type RejectedChange,
  type Role,
  type Summoning,
  type SyncStatus,
} from "@fieldsync/client";
import { IndexedDbStorage } from "@fieldsync/client/indexeddb";

import { membersHealth, type MemberHealth } from "./api.js";
import { digest, ViewCache, type Cached } from "./view-cache.js";
import { isLevel, type Level, type Member } from "./permissions.js";
import { recalled, remember, type Session } from "./session.js";

type Maps = { [T in EntityType]: Map<string, EntityTypes[T]> };

export class AppStore {
  version = 0;
  readonly entities: Maps;
  conflicts: Conflict[] = [];
  rejected: RejectedChange[] = [];
  status: SyncStatus;
  members: MemberHealth[] | null = null;
  membersError: string | null = null;
  /** The last problem an edit of this app ran into (a ValidationError's message). */
  notice: string | null = null;
  userId: string | null;
  level: Level | null;
  member: Member;
  private readonly typeOf = new Map<string, EntityType>();
  private readonly listeners = new Set<() => void>();
  private healthTimer: ReturnType<typeof setInterval> | undefined;
  /** Refreshes run one after another, so the cache ends with the latest values. */
  private refreshing: Promise<void> = Promise.resolve();

  private constructor(
    readonly session: Session,
    readonly client: FieldsyncClient,
    readonly project: Project,
    private readonly storage: IndexedDbStorage,
    private readonly cache: ViewCache | null,
  ) {
    this.entities = Object.fromEntries(ENTITY_TYPES.map((t) => [t, new Map()])) as unknown as Maps;
    this.status = client.status;
    this.userId = recalled(session.projectId, "user_id");
    const level = recalled(session.projectId, "level");
    this.level = isLevel(level) ? level : null;
    this.member = this.computeMember();
  }

  static async open(session: Session): Promise<AppStore> {
    const storage = await IndexedDbStorage.open("fieldsync-app");
    const client = await FieldsyncClient.create({ url: location.origin, token: session.token, storage, backoffBaseMs: 250, backoffCapMs: 5_000 });
    const project = await client.openProject(session.projectId, { timeoutMs: 15_000 });
    const store = new AppStore(session, client, project, storage, await ViewCache.open(session.projectId));
    await store.loadAll();
    project.onChange((event) => void store.refresh([...event.entityIds]));
    project.onConflicts(() => void store.loadConflicts());
    project.onRejected(() => void store.loadRejected());
    client.onStatus((status) => store.statusChanged(status));
    store.statusChanged(client.status);
    store.healthTimer = setInterval(() => void store.loadMembers(), 10_000);
    return store;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    this.member = this.computeMember();
    this.version += 1;
    for (const listener of this.listeners) listener();
  }

  get activities(): Map<string, Activity> { return this.entities.activity; }
  get locations(): Map<string, Location> { return this.entities.location; }
  get summonings(): Map<string, Summoning> { return this.entities.summoning; }
  get roles(): Map<string, Role> { return this.entities.role; }
  get memberships(): Map<string, Membership> { return this.entities.membership; }
  get plans(): Map<string, Plan> { return this.entities.plan; }

  private computeMember(): Member {
    const summonedTo = new Set<string>();
    if (this.userId !== null) {
      for (const s of this.entities.summoning.values()) if (s.user_id === this.userId && !s.deleted) summonedTo.add(s.activity_id);
    }
    return { userId: this.userId ?? "", level: this.userId === null ? null : this.level, summonedTo };
  }

  /** A member's display name by user id, from the memberships (the health list otherwise). */
  personName(userId: string | null | undefined): string {
    if (!userId) return "(anyone in the role)";
    for (const m of this.entities.membership.values()) if (m.user_id === userId && m.display_name) return m.display_name;
    const health = this.members?.find((m) => m.user_id === userId);
    return health?.display_name ?? `user ${userId.slice(0, 8)}`;
  }

  // --- loading --------------------------------------------------------------------------------

  /** Every entity's values: from the read cache where the stored bytes are unchanged, through
   * the SDK otherwise. */
  private async loadAll(): Promise<void> {
    const [rows, cached] = await Promise.all([this.storage.entities(this.session.projectId), this.cache?.all() ?? new Map<string, Cached>()]);
    const fresh: Cached[] = [];
    for (const row of rows) {
      const type = row.entityType as EntityType;
      if (!(type in this.entities)) continue;
      this.typeOf.set(row.entityId, type);
      const sum = digest(row.document);
      const hit = cached.get(row.entityId);
      let values = hit !== undefined && hit.digest === sum && hit.entityType === type ? hit.values : undefined;
      cached.delete(row.entityId);
      if (values === undefined) {
        values = await this.project.get(type, row.entityId);
        fresh.push({ entityId: row.entityId, entityType: type, digest: sum, values });
      }
      if (!(values as { deleted?: boolean | null }).deleted) (this.entities[type] as Map<string, unknown>).set(row.entityId, values);
    }
    await this.cache?.put(fresh, [...cached.keys()]).catch(() => undefined);
    await this.loadConflicts(false);
    await this.loadRejected(false);
    this.changed();
  }

  /** Re-read entities the server changed (or the app edited); ids of unknown type are looked up. */
  refresh(ids: readonly string[]): Promise<void> {
    this.refreshing = this.refreshing.then(() => this.reread(ids)).catch((e: unknown) => console.warn("refresh failed", e));
    return this.refreshing;
  }

  private async reread(ids: readonly string[]): Promise<void> {
    if (ids.some((id) => !this.typeOf.has(id))) {
      for (const type of ENTITY_TYPES) for (const id of await this.project.ids(type, { includeDeleted: true })) this.typeOf.set(id, type);
    }
    const fresh: Cached[] = [];
    for (const id of ids) {
      const type = this.typeOf.get(id);
      if (type === undefined) continue;
      // The stored bytes first, the values second: the values are then at least as new as the
      // bytes, so a cache entry never pairs new bytes with old values.
      const row = await this.storage.entity(this.session.projectId, id);
      const values = (await this.project.get(type, id)) as { deleted?: boolean | null };
      if (row !== undefined) fresh.push({ entityId: id, entityType: type, digest: digest(row.document), values });
      const map = this.entities[type] as Map<string, unknown>;
      if (values.deleted) map.delete(id);
      else map.set(id, values);
    }
    this.changed();
    await this.cache?.put(fresh).catch(() => undefined);
  }

  async loadConflicts(notify = true): Promise<void> {
    this.conflicts = await this.project.conflicts();
    if (notify) this.changed();
  }

  async loadRejected(notify = true): Promise<void> {
    this.rejected = await this.project.rejectedChanges();
    if (notify) this.changed();
  }

  /** Members' health from the HTTP API; it also tells this member's level, kept for offline use. */
  async loadMembers(): Promise<void> {
    if (this.userId === null || !navigator.onLine) return;
    try {
      this.members = await membersHealth(this.session.projectId, this.session.token);
      this.membersError = null;
      const me = this.members.find((m) => m.user_id === this.userId);
      if (me !== undefined && isLevel(me.level) && me.level !== this.level) {
        this.level = me.level;
        remember(this.session.projectId, "level", me.level);
      }
    } catch (error) {
      this.membersError = error instanceof Error ? error.message : String(error);
    }
    this.changed();
  }

  private statusChanged(status: SyncStatus): void {
    this.status = status;
    const userId = this.client.userId;
    const welcomed = userId !== null && userId !== this.userId;
    if (welcomed) {
      this.userId = userId;
      remember(this.session.projectId, "user_id", userId);
    }
    if (welcomed || (status.connection === "online" && this.members === null)) void this.loadMembers();
    this.changed();
  }

  // --- editing --------------------------------------------------------------------------------

  /** Run one edit of the SDK, then show its effect (or why it was not made). */
  async edit(entityId: string, run: (project: Project) => Promise<unknown>): Promise<boolean> {
    try {
      await run(this.project);
      this.notice = null;
      await this.refresh([entityId]);
      return true;
    } catch (error) {
      this.notice = error instanceof Error ? error.message : String(error);
      this.changed();
      return false;
    }
  }

  async resolve(conflict: Conflict, value: unknown): Promise<boolean> {
    return this.edit(conflict.entityIds[0] ?? "", (project) => project.resolveConflict(conflict.conflictId, value));
  }

  async dismissRejected(): Promise<void> {
    await this.project.dismissRejected();
    await this.loadRejected();
  }

  async close(): Promise<void> {
    clearInterval(this.healthTimer);
    await this.refreshing;
    this.cache?.close();
    await this.client.close();
  }
}
