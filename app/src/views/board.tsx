/** The summoning board: who is called in when, per role, double bookings marked. */
import { useMemo } from "preact/hooks";

import { byRole, doubleBookings } from "../board.js";
import { dateTimeLabel } from "../format.js";
import { href } from "../router.js";
import type { AppStore } from "../store.js";

export function SummoningBoard({ store }: { store: AppStore }) {
  const [groups, doubles] = useMemo(() => [byRole(store.summonings), doubleBookings(store.summonings)], [store.version]);
  const roleName = (id: string | null): string => (id === null ? "Called in by name" : (store.roles.get(id)?.name ?? `role ${id.slice(0, 8)}`));
  const keys = [...groups.keys()].sort((a, b) => roleName(a).localeCompare(roleName(b)));
  return (
    <section aria-labelledby="board-title">
      <h1 id="board-title">Summoning board</h1>
      <p class="muted">{store.summonings.size} summonings · {doubles.size} double-booked</p>
      {keys.map((key) => (
        <section key={key ?? ""} aria-label={roleName(key)} class="board-role">
          <h2>{roleName(key)}</h2>
          <div class="table-wrap">
            <table>
              <thead>
                <tr><th scope="col">Who</th><th scope="col">Activity</th><th scope="col">From</th><th scope="col">To</th><th scope="col">Status</th></tr>
              </thead>
              <tbody>
                {groups.get(key)!.map(([id, s]) => {
                  const twice = doubles.has(id);
                  return (
                    <tr key={id} class={twice ? "double" : ""} data-summoning-id={id} data-double={twice ? "true" : "false"}>
                      <td>{store.personName(s.user_id)}{twice && <span class="badge danger" title="This person is summoned elsewhere at the same time"> double-booked</span>}</td>
                      <td><a href={href({ screen: "activity", id: s.activity_id })}>{store.activities.get(s.activity_id)?.title ?? s.activity_id.slice(0, 8)}</a></td>
                      <td>{dateTimeLabel(s.starts_at)}</td>
                      <td>{dateTimeLabel(s.ends_at)}</td>
                      <td><span class={`badge st-${s.status}`}>{s.status}</span></td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </section>
      ))}
    </section>
  );
}
