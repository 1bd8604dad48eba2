/** Sync at a glance: connection, edits waiting, last synced, and every problem with its reason. */
import { useEffect, useState } from "preact/hooks";

import { ago } from "../format.js";
import type { AppStore } from "../store.js";

function connectionLabel(store: AppStore): string {
  const s = store.status;
  if (s.connection === "online") return s.syncing ? "syncing" : "online";
  if (s.connection === "stopped") return s.lastError === null ? "paused" : "stopped";
  return s.connection; // connecting, offline
}

export function StatusBar({ store }: { store: AppStore }) {
  const [, tick] = useState(0);
  const [open, setOpen] = useState(false);
  useEffect(() => {
    const timer = setInterval(() => tick((n) => n + 1), 5_000); // "last synced … ago" stays true
    return () => clearInterval(timer);
  }, []);
  const s = store.status;
  const state = connectionLabel(store);
  const problems = [
    s.lastError === null ? null : `Sync problem: ${s.lastError.message}`,
    s.serverProblem === null ? null : `Server problem: ${s.serverProblem}`,
    store.notice === null ? null : `Not saved: ${store.notice}`,
    store.membersError === null ? null : `Members' health unavailable: ${store.membersError}`,
  ].filter((p): p is string => p !== null);
  return (
    <footer class="status-bar" aria-label="Sync status">
      <div class="status-line" role="status" aria-live="polite">
        <span class={`badge conn-${state}`} data-testid="connection">{state}</span>
        <span data-testid="pending">{s.pending === 0 ? "all edits sent" : `${s.pending} edit${s.pending === 1 ? "" : "s"} waiting`}</span>
        <span data-testid="last-synced">last synced {ago(s.lastSyncedAt)}</span>
        {store.rejected.length > 0 && (
          <button type="button" class="link danger" aria-expanded={open} onClick={() => setOpen(!open)}>
            {store.rejected.length} refused
          </button>
        )}
      </div>
      {problems.length > 0 && (
        <ul class="problems" aria-label="Problems">
          {problems.map((p) => <li key={p}>{p}</li>)}
        </ul>
      )}
      {open && store.rejected.length > 0 && (
        <section class="refused" aria-label="Refused changes">
          <ul>
            {store.rejected.map((r) => (
              <li key={r.id}>
                {r.entityType} {r.entityId.slice(0, 8)}: <strong>{r.code}</strong> {r.message}
              </li>
            ))}
          </ul>
          <button type="button" onClick={() => void store.dismissRejected()}>Dismiss refused changes</button>
        </section>
      )}
    </footer>
  );
}
