/** A specialist's plan: the summonings naming them, and their activities, day by day. */
import type { Summoning } from "@fieldsync/client";

import { dayKey, dayLabel, timeLabel } from "../format.js";
import { mayEdit } from "../permissions.js";
import { href } from "../router.js";
import type { AppStore } from "../store.js";

export function MyPlan({ store }: { store: AppStore }) {
  const me = store.userId;
  const mine = [...store.summonings].filter(([, s]) => me !== null && s.user_id === me).sort(([, a], [, b]) => a.starts_at.getTime() - b.starts_at.getTime());
  const days = new Map<string, [string, Summoning][]>();
  for (const entry of mine) {
    const key = dayKey(entry[1].starts_at);
    days.set(key, [...(days.get(key) ?? []), entry]);
  }
  return (
    <section aria-labelledby="plan-title">
      <h1 id="plan-title">My plan</h1>
      {me === null && <p>Connect once so the server can tell who you are; your plan then stays available offline.</p>}
      {me !== null && mine.length === 0 && <p>You are not summoned to any activity.</p>}
      {[...days].map(([key, entries]) => (
        <section key={key} class="day" aria-label={dayLabel(entries[0]![1].starts_at)}>
          <h2>{dayLabel(entries[0]![1].starts_at)}</h2>
          <ul class="cards">
            {entries.map(([id, s]) => {
              const activity = store.activities.get(s.activity_id);
              const location = activity?.location_id ? store.locations.get(activity.location_id) : undefined;
              const may = mayEdit(store.member, "summoning", id, s, "status");
              return (
                <li key={id} class="card" data-summoning-id={id}>
                  <div class="card-main">
                    <a href={href({ screen: "activity", id: s.activity_id })} class="card-title">
                      {activity?.title ?? "(activity not synced yet)"}
                    </a>
                    <div class="muted">
                      {timeLabel(s.starts_at)}–{timeLabel(s.ends_at)}
                      {location ? ` · ${location.name}` : ""}
                      {activity ? ` · activity ${activity.status.replace("_", " ")}` : ""}
                    </div>
                  </div>
                  <div class="card-actions">
                    <span class={`badge st-${s.status}`}>{s.status}</span>
                    <button type="button" disabled={!may || s.status === "confirmed"} onClick={() => void store.edit(id, (p) => p.update("summoning", id, { status: "confirmed" }))} aria-label={`Confirm ${activity?.title ?? "summoning"}`}>
                      Confirm
                    </button>
                    <button type="button" disabled={!may || s.status === "declined"} onClick={() => void store.edit(id, (p) => p.update("summoning", id, { status: "declined" }))} aria-label={`Decline ${activity?.title ?? "summoning"}`}>
                      Decline
                    </button>
                  </div>
                </li>
              );
            })}
          </ul>
        </section>
      ))}
    </section>
  );
}
