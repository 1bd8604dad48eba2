/** What the app can show about sync: connection, work in progress, the last problem. */
import type { FieldsyncError } from "./errors.js";
import type { ConnectionStatus } from "./sync-loop.js";

export interface SyncStatus {
  /** `online`, `connecting`, `offline` (waiting to retry) or `stopped` (paused, closed, or
   * stopped by an AuthError or IncompatibleServer: see lastError). */
  readonly connection: ConnectionStatus;
  /** Online and catching up, or a push in flight. */
  readonly syncing: boolean;
  /** Local changes waiting for the server's acknowledgement. */
  readonly pending: number;
  /** Local changes the server refused (see `Project.rejectedChanges()`). */
  readonly rejected: number;
  /** The last time everything was up to date both ways (ms since the epoch). */
  readonly lastSyncedAt: number | null;
  /** The latest problem, until the next good connection. */
  readonly lastError: FieldsyncError | null;
  /** What the server says is wrong on its side (`database_unavailable`), or null. */
  readonly serverProblem: string | null;
}

export function sameStatus(a: SyncStatus, b: SyncStatus): boolean {
  return (
    a.connection === b.connection && a.syncing === b.syncing && a.pending === b.pending && a.rejected === b.rejected &&
    a.lastSyncedAt === b.lastSyncedAt && a.lastError === b.lastError && a.serverProblem === b.serverProblem
  );
}
