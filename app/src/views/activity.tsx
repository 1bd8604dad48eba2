/**
 * One activity: every field, editable where the write rules let this member change it and
 * read-only where they do not (so nothing is refused later). The description is edited as
 * collaborative text: each keystroke becomes a splice, so others' edits elsewhere merge.
 * Photos are attached below (views/attachments.tsx).
 */
import type { Activity } from "@fieldsync/client";
import { useEffect, useRef, useState } from "preact/hooks";

import { fromLocalInput, toLocalInput } from "../format.js";
import { mayEdit } from "../permissions.js";
import type { AppStore } from "../store.js";
import { Attachments } from "./attachments.js";

const STATUSES: Activity["status"][] = ["planned", "confirmed", "in_progress", "done", "cancelled"];

/** The one splice that turns `before` into `after` (common start and end kept). */
export function spliceBetween(before: string, after: string): { index: number; remove: number; insert: string } {
  let start = 0;
  while (start < before.length && start < after.length && before[start] === after[start]) start++;
  let end = 0;
  while (end < before.length - start && end < after.length - start && before[before.length - 1 - end] === after[after.length - 1 - end]) end++;
  return { index: start, remove: before.length - start - end, insert: after.slice(start, after.length - end) };
}

function Description({ store, id, text, editable }: { store: AppStore; id: string; text: string; editable: boolean }) {
  const area = useRef<HTMLTextAreaElement>(null);
  const written = useRef(text);
  useEffect(() => {
    // Someone else's edit arrived: show it, keeping the caret where it was.
    const el = area.current;
    if (el === null || el.value === text) return;
    const [from, to] = [el.selectionStart, el.selectionEnd];
    el.value = text;
    written.current = text;
    if (document.activeElement === el) el.setSelectionRange(Math.min(from, text.length), Math.min(to, text.length));
  }, [text]);
  const input = (): void => {
    const el = area.current!;
    const splice = spliceBetween(written.current, el.value);
    written.current = el.value;
    void store.edit(id, (p) => (text === "" && store.activities.get(id)?.description == null ? p.update("activity", id, { description: el.value }) : p.spliceText("activity", id, "description", splice.index, splice.remove, splice.insert)));
  };
  return (
    <div class="field wide">
      <label for="f-description">Description</label>
      <textarea id="f-description" ref={area} rows={5} defaultValue={text} disabled={!editable} onInput={input} />
    </div>
  );
}

export function ActivityDetail({ store, id }: { store: AppStore; id: string }) {
  const activity = store.activities.get(id);
  const [newTask, setNewTask] = useState("");
  if (activity === undefined) {
    return (
      <section aria-labelledby="activity-title">
        <h1 id="activity-title">Activity not found</h1>
        <p>It may not have synced yet, or it was deleted.</p>
      </section>
    );
  }
  const may = (field: string): boolean => mayEdit(store.member, "activity", id, activity, field);
  const save = (values: Partial<Record<keyof Activity, unknown>>): void => void store.edit(id, (p) => p.update("activity", id, values as never));
  const time = (field: "starts_at" | "ends_at", label: string) => (
    <div class="field">
      <label for={`f-${field}`}>{label}</label>
      <input
        id={`f-${field}`}
        type="datetime-local"
        value={toLocalInput(activity[field])}
        disabled={!may(field)}
        data-value={activity[field].toISOString()}
        onChange={(e) => {
          const d = fromLocalInput((e.target as HTMLInputElement).value);
          if (d !== null) save({ [field]: d });
        }}
      />
    </div>
  );
  const tasks = activity.tasks ?? [];
  const plan = store.plans.get(activity.plan_id);
  const readOnly = ["title", "location_id", "starts_at", "ends_at", "status", "description", "tasks"].filter((f) => !may(f));
  return (
    <section aria-labelledby="activity-title" class="activity" data-activity-id={id}>
      <h1 id="activity-title">{activity.title}</h1>
      <p class="muted">
        Plan: {plan?.name ?? activity.plan_id}
        {readOnly.length > 0 && <span> · read-only for you: {readOnly.map((f) => f.replace("_", " ")).join(", ")}</span>}
      </p>
      <form class="fields" onSubmit={(e) => e.preventDefault()} aria-label="Activity fields">
        <div class="field wide">
          <label for="f-title">Title</label>
          <input id="f-title" value={activity.title} disabled={!may("title")} onChange={(e) => save({ title: (e.target as HTMLInputElement).value })} />
        </div>
        {time("starts_at", "Starts")}
        {time("ends_at", "Ends")}
        <div class="field">
          <label for="f-status">Status</label>
          <select id="f-status" value={activity.status} disabled={!may("status")} onChange={(e) => save({ status: (e.target as HTMLSelectElement).value })}>
            {STATUSES.map((s) => <option key={s} value={s}>{s.replace("_", " ")}</option>)}
          </select>
        </div>
        <div class="field">
          <label for="f-location">Location</label>
          <select id="f-location" value={activity.location_id ?? ""} disabled={!may("location_id")} onChange={(e) => save({ location_id: (e.target as HTMLSelectElement).value || null })}>
            <option value="">(no location)</option>
            {[...store.locations].map(([lid, l]) => <option key={lid} value={lid}>{l.name}</option>)}
          </select>
        </div>
        <Description store={store} id={id} text={activity.description ?? ""} editable={may("description")} />
      </form>
      <section aria-labelledby="tasks-title" class="tasks">
        <h2 id="tasks-title">Tasks</h2>
        {tasks.length === 0 && <p class="muted">No tasks.</p>}
        <ul>
          {tasks.map((task, i) => (
            <li key={i}>
              <input
                type="checkbox"
                id={`task-${i}`}
                checked={task.done}
                disabled={!may("tasks")}
                onChange={(e) => save({ tasks: tasks.map((t, j) => (j === i ? { title: t.title, done: (e.target as HTMLInputElement).checked } : { title: t.title, done: t.done })) })}
              />
              <label for={`task-${i}`}>{task.title}</label>
              <button type="button" class="link" disabled={!may("tasks")} aria-label={`Remove task ${task.title}`} onClick={() => void store.edit(id, (p) => p.removeItem("activity", id, "tasks", i))}>
                Remove
              </button>
            </li>
          ))}
        </ul>
        <form
          class="add-task"
          aria-label="Add a task"
          onSubmit={(e) => {
            e.preventDefault();
            if (!newTask.trim()) return;
            void store.edit(id, (p) => p.insertItem("activity", id, "tasks", tasks.length, { title: newTask.trim(), done: false }));
            setNewTask("");
          }}
        >
          <label for="new-task">New task</label>
          <input id="new-task" value={newTask} disabled={!may("tasks")} onInput={(e) => setNewTask((e.target as HTMLInputElement).value)} />
          <button type="submit" disabled={!may("tasks")}>Add task</button>
        </form>
      </section>
      <Attachments store={store} activityId={id} ids={activity.attachments ?? []} editable={may("attachments")} />
    </section>
  );
}
