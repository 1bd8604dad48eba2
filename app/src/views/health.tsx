/** Members' sync health, from the HTTP API (`/members/health`). */
import { ago } from "../format.js";
import type { AppStore } from "../store.js";

function age(ms: number | null): string {
  if (ms === null) return "—";
  if (ms < 60_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 3_600_000) return `${Math.round(ms / 60_000)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

export function MembersHealth({ store }: { store: AppStore }) {
  const members = store.members;
  return (
    <section aria-labelledby="health-title">
      <div class="toolbar">
        <h1 id="health-title">Members' sync health</h1>
        <button type="button" onClick={() => void store.loadMembers()}>Refresh</button>
      </div>
      {store.membersError !== null && <p class="danger">Could not load: {store.membersError}</p>}
      {members === null ? (
        <p>Not loaded yet{navigator.onLine ? "" : ": this needs the network"}.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr><th scope="col">Member</th><th scope="col">Level</th><th scope="col">Connected</th><th scope="col">Last seen</th><th scope="col">Oldest unsent edit</th><th scope="col">Client</th></tr>
            </thead>
            <tbody>
              {members.map((m) => (
                <tr key={m.user_id} data-user-id={m.user_id}>
                  <td>{m.display_name ?? m.user_id.slice(0, 8)}</td>
                  <td>{m.level}</td>
                  <td><span class={`badge ${m.connected ? "conn-online" : "conn-offline"}`}>{m.connected ? "connected" : "not connected"}</span></td>
                  <td>{m.last_seen_at === null ? "never" : ago(Date.parse(m.last_seen_at))}</td>
                  <td>{age(m.outbox_age_ms)}</td>
                  <td>{m.client_version ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
