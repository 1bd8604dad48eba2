/** Conflicts with their competing values and a way to choose (a specialist sees those that
 * concern them, a lead all open ones). */
import type { Conflict } from "@fieldsync/client";

import { valueLabel } from "../format.js";
import { mayEdit } from "../permissions.js";
import { href } from "../router.js";
import type { AppStore } from "../store.js";

const KINDS: Record<string, string> = {
  concurrent_edit: "Edited at the same time",
  broken_interval: "Ends before it starts",
  edit_to_deleted: "Edited while deleted",
  deleted_reference: "Refers to something deleted",
  double_booking: "Double booking",
  summoning_outside_activity: "Summoned outside the activity's time",
};

function concernsMe(store: AppStore, conflict: Conflict): boolean {
  const me = store.userId;
  if (me === null) return false;
  if (conflict.changes.some((c) => c.user === me)) return true;
  return conflict.entityIds.some((id) => store.member.summonedTo.has(id) || store.summonings.get(id)?.user_id === me);
}

function entityLabel(store: AppStore, id: string): { type: string; label: string } {
  const activity = store.activities.get(id);
  if (activity) return { type: "activity", label: activity.title };
  const summoning = store.summonings.get(id);
  if (summoning) return { type: "summoning", label: `summoning of ${store.personName(summoning.user_id)}` };
  const location = store.locations.get(id);
  if (location) return { type: "location", label: location.name };
  return { type: "", label: id };
}

function ConflictCard({ store, conflict }: { store: AppStore; conflict: Conflict }) {
  const entityId = conflict.entityIds[0] ?? "";
  const { type, label } = entityLabel(store, entityId);
  const values = type === "" ? {} : ((store.entities as unknown as Record<string, Map<string, Record<string, unknown>>>)[type]?.get(entityId) ?? {});
  const field = conflict.fields[0] ?? "";
  const choosable = conflict.kind === "concurrent_edit" && conflict.fields.length === 1 && type !== "";
  const may = choosable && mayEdit(store.member, type, entityId, values, field);
  const candidates = choosable ? conflict.candidates(type) : [];
  return (
    <li class="card conflict" data-conflict-id={conflict.conflictId} data-kind={conflict.kind}>
      <div class="card-main">
        <h2 class="card-title">
          {KINDS[conflict.kind] ?? conflict.kind}: {type === "activity" ? <a href={href({ screen: "activity", id: entityId })}>{label}</a> : label}
        </h2>
        <div class="muted">Field{conflict.fields.length === 1 ? "" : "s"}: {conflict.fields.join(", ").replaceAll("_", " ") || "—"}</div>
        {conflict.resolution !== null && <div class="muted">Meanwhile: {conflict.resolution}</div>}
        {choosable ? (
          <ul class="candidates" aria-label="Competing values">
            {candidates.map((value, i) => (
              <li key={i}>
                <span class="value">{valueLabel(value)}</span>
                {i === 0 && <span class="badge">shown now</span>}
                {conflict.changes[i]?.user && <span class="muted"> by {store.personName(conflict.changes[i]!.user)}</span>}
                <button type="button" disabled={!may || !conflict.open} onClick={() => void store.resolve(conflict, value)} aria-label={`Keep ${valueLabel(value)}`}>
                  Keep this
                </button>
              </li>
            ))}
          </ul>
        ) : (
          <p class="muted">Resolved by editing {conflict.entityIds.length > 1 ? "the entities involved" : "it"}: {conflict.entityIds.map((id) => entityLabel(store, id).label).join(", ")}.</p>
        )}
      </div>
    </li>
  );
}

export function Conflicts({ store, all }: { store: AppStore; all: boolean }) {
  const shown = store.conflicts.filter((c) => c.open && (all || concernsMe(store, c)));
  return (
    <section aria-labelledby="conflicts-title">
      <h1 id="conflicts-title">{all ? "Open conflicts" : "My conflicts"}</h1>
      {shown.length === 0 ? <p>No open conflicts{all ? "" : " concern you"}.</p> : <ul class="cards">{shown.map((c) => <ConflictCard key={c.conflictId} store={store} conflict={c} />)}</ul>}
    </section>
  );
}
