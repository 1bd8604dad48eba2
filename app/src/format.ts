/** Dates as people read them here: the browser's time zone and an unambiguous day-month order. */

const DAY = new Intl.DateTimeFormat("en-GB", { weekday: "short", day: "numeric", month: "short", year: "numeric" });
const SHORT_DAY = new Intl.DateTimeFormat("en-GB", { weekday: "short", day: "numeric", month: "short" });
const TIME = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit" });
const DATETIME = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });

export const dayLabel = (d: Date): string => DAY.format(d);
export const dayShort = (d: Date): string => SHORT_DAY.format(d);
export const timeLabel = (d: Date): string => TIME.format(d);
export const dateTimeLabel = (d: Date): string => DATETIME.format(d);

/** The local calendar day, as a sortable key. */
export function dayKey(d: Date): string {
  const pad = (n: number): string => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** A `datetime-local` input's value for `d` (local time, minutes). */
export function toLocalInput(d: Date): string {
  const pad = (n: number): string => String(n).padStart(2, "0");
  return `${dayKey(d)}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A `datetime-local` value as a Date, or null when it is not a complete date and time. */
export function fromLocalInput(value: string): Date | null {
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$/.test(value)) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function ago(ms: number | null, now = Date.now()): string {
  if (ms === null) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/** A conflict's or a field's value for people: ISO timestamps as dates, the rest as text. */
export function valueLabel(value: unknown): string {
  if (value instanceof Date) return dateTimeLabel(value);
  if (typeof value === "string" && /^\d{4}-\d{2}-\d{2}T/.test(value)) {
    const d = new Date(value);
    if (!Number.isNaN(d.getTime())) return dateTimeLabel(d);
  }
  if (value === null || value === undefined) return "(not set)";
  return typeof value === "string" ? value : JSON.stringify(value);
}
