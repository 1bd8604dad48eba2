/**
 * The timeline's geometry, apart from the DOM: one row per location (lanes inside a row for
 * activities that overlap), and which bars a viewport shows. Laying out 10,000 activities is
 * a sort and one pass; only the bars in view become elements.
 */
import type { Activity, Location } from "@fieldsync/client";

export const LANE_PX = 30;
export const HEADER_PX = 28;
export const LABEL_PX = 150;
const HOUR = 3_600_000;
export const DAY = 24 * HOUR;

export interface Bar {
  readonly id: string;
  readonly title: string;
  readonly status: string;
  readonly start: number;
  readonly end: number;
  readonly row: number;
  readonly top: number; // px from the top of the lanes
}

export interface Row {
  readonly locationId: string | null;
  readonly name: string;
  readonly top: number;
  readonly lanes: number;
}

export interface Layout {
  readonly rows: readonly Row[];
  readonly bars: readonly Bar[]; // sorted by start
  readonly origin: number; // ms, midnight before the earliest start
  readonly end: number;
  readonly height: number;
}

export function layout(activities: ReadonlyMap<string, Activity>, locations: ReadonlyMap<string, Location>): Layout {
  const byRow = new Map<string | null, { id: string; a: Activity }[]>();
  let min = Infinity;
  let max = -Infinity;
  for (const [id, a] of activities) {
    const key = a.location_id && locations.has(a.location_id) ? a.location_id : null;
    let list = byRow.get(key);
    if (list === undefined) byRow.set(key, (list = []));
    list.push({ id, a });
    min = Math.min(min, a.starts_at.getTime());
    max = Math.max(max, a.ends_at.getTime(), a.starts_at.getTime());
  }
  const keys = [...byRow.keys()].sort((x, y) => (x === null ? 1 : y === null ? -1 : (locations.get(x)!.name).localeCompare(locations.get(y)!.name)));
  const rows: Row[] = [];
  const bars: Bar[] = [];
  let top = 0;
  for (const key of keys) {
    const items = byRow.get(key)!.sort((x, y) => x.a.starts_at.getTime() - y.a.starts_at.getTime() || (x.id < y.id ? -1 : 1));
    const laneEnds: number[] = [];
    for (const { id, a } of items) {
      const start = a.starts_at.getTime();
      const end = Math.max(a.ends_at.getTime(), start + 15 * 60_000); // an inverted interval still shows
      let lane = laneEnds.findIndex((e) => e <= start);
      if (lane === -1) lane = laneEnds.push(end) - 1;
      else laneEnds[lane] = end;
      bars.push({ id, title: a.title, status: a.status, start, end, row: rows.length, top: top + lane * LANE_PX });
    }
    const lanes = Math.max(1, laneEnds.length);
    rows.push({ locationId: key, name: key === null ? "No location" : locations.get(key)!.name, top, lanes });
    top += lanes * LANE_PX;
  }
  bars.sort((x, y) => x.start - y.start);
  const origin = Number.isFinite(min) ? startOfDay(min) : startOfDay(Date.now());
  const end = Number.isFinite(max) ? startOfDay(max) + DAY : origin + 7 * DAY;
  return { rows, bars, origin, end, height: top };
}

function startOfDay(ms: number): number {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** The bars that intersect [t0, t1] and lanes [y0, y1]; at most `limit` of them. */
export function visibleBars(layout: Layout, t0: number, t1: number, y0: number, y1: number, limit = 2_000): Bar[] {
  const out: Bar[] = [];
  // Bars sorted by start: those starting after t1 are out; the longest bar bounds how far back to look.
  for (const bar of layout.bars) {
    if (bar.start > t1) break;
    if (bar.end < t0 || bar.top + LANE_PX < y0 || bar.top > y1) continue;
    out.push(bar);
    if (out.length >= limit) break;
  }
  return out;
}
