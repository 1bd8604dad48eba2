/** The summoning board's logic, apart from the DOM: who is called in when, per role, and
 * which summonings book one person twice at the same time. */
import type { Summoning } from "@fieldsync/client";

const INACTIVE = new Set(["declined", "cancelled"]);

/** Ids of the active summonings that overlap another active one of the same user. */
export function doubleBookings(summonings: ReadonlyMap<string, Summoning>): Set<string> {
  const byUser = new Map<string, [string, Summoning][]>();
  for (const entry of summonings) {
    const s = entry[1];
    if (!s.user_id || INACTIVE.has(s.status)) continue;
    byUser.set(s.user_id, [...(byUser.get(s.user_id) ?? []), entry]);
  }
  const out = new Set<string>();
  for (const list of byUser.values()) {
    list.sort(([, a], [, b]) => a.starts_at.getTime() - b.starts_at.getTime());
    let reach: [string, number] | null = null; // the entry reaching furthest so far, and its end
    for (const [id, s] of list) {
      if (reach !== null && s.starts_at.getTime() < reach[1]) {
        out.add(id);
        out.add(reach[0]);
      }
      if (reach === null || s.ends_at.getTime() > reach[1]) reach = [id, s.ends_at.getTime()];
    }
  }
  return out;
}

/** Summonings grouped by role id (null: called in by name only), each group by start. */
export function byRole(summonings: ReadonlyMap<string, Summoning>): Map<string | null, [string, Summoning][]> {
  const groups = new Map<string | null, [string, Summoning][]>();
  for (const entry of summonings) {
    const key = entry[1].role_id ?? null;
    groups.set(key, [...(groups.get(key) ?? []), entry]);
  }
  for (const list of groups.values()) list.sort(([, a], [, b]) => a.starts_at.getTime() - b.starts_at.getTime());
  return groups;
}
