/** The plan as a timeline: activities per location over time. Only the bars in view are
 * elements (buttons: keyboard reachable, labelled), so 10,000 activities scroll as easily as 10. */
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";

import { dateTimeLabel, dayShort } from "../format.js";
import { href } from "../router.js";
import type { AppStore } from "../store.js";
import { DAY, HEADER_PX, LABEL_PX, layout, visibleBars } from "../timeline-layout.js";

const ZOOMS = [2, 4, 8, 16, 32]; // px per hour

export function Timeline({ store }: { store: AppStore }) {
  const geometry = useMemo(() => layout(store.activities, store.locations), [store.version]);
  const [zoom, setZoom] = useState(2);
  const pxPerMs = ZOOMS[zoom]! / 3_600_000;
  const scroller = useRef<HTMLDivElement>(null);
  const [view, setView] = useState({ left: 0, top: 0, width: 1024, height: 600 });
  const frame = useRef(0);
  const onScroll = (): void => {
    cancelAnimationFrame(frame.current);
    frame.current = requestAnimationFrame(() => {
      const el = scroller.current;
      if (el) setView({ left: el.scrollLeft, top: el.scrollTop, width: el.clientWidth, height: el.clientHeight });
    });
  };
  useLayoutEffect(onScroll, [zoom]);
  useEffect(() => {
    addEventListener("resize", onScroll);
    return () => removeEventListener("resize", onScroll);
  }, []);
  useEffect(() => {
    const timings = (window as unknown as { fieldsyncApp?: { timings: Record<string, number> } }).fieldsyncApp?.timings;
    if (timings && timings.timelineRendered === undefined) requestAnimationFrame(() => (timings.timelineRendered = performance.now()));
  }, []);
  const t0 = geometry.origin + Math.max(0, view.left - LABEL_PX) / pxPerMs;
  const t1 = geometry.origin + (view.left + view.width) / pxPerMs;
  const bars = visibleBars(geometry, t0, t1, view.top - 2 * HEADER_PX, view.top + view.height);
  const width = LABEL_PX + (geometry.end - geometry.origin) * pxPerMs;
  const days: number[] = [];
  const firstDay = geometry.origin + Math.floor(Math.max(0, t0 - geometry.origin) / DAY) * DAY;
  for (let d = firstDay; d <= t1 && days.length < 400; d += DAY) days.push(d);
  const x = (ms: number): number => LABEL_PX + (ms - geometry.origin) * pxPerMs;
  const goTo = (value: string): void => {
    const ms = new Date(`${value}T00:00`).getTime();
    if (!Number.isNaN(ms) && scroller.current) scroller.current.scrollLeft = x(ms) - LABEL_PX;
  };
  return (
    <section aria-labelledby="timeline-title" class="timeline-screen">
      <div class="toolbar">
        <h1 id="timeline-title">Timeline</h1>
        <span class="muted" data-testid="activity-count">{store.activities.size} activities, {geometry.rows.length} locations</span>
        <button type="button" onClick={() => setZoom(Math.max(0, zoom - 1))} disabled={zoom === 0} aria-label="Zoom out">−</button>
        <button type="button" onClick={() => setZoom(Math.min(ZOOMS.length - 1, zoom + 1))} disabled={zoom === ZOOMS.length - 1} aria-label="Zoom in">+</button>
        <label for="goto">Go to</label>
        <input id="goto" type="date" onChange={(e) => goTo((e.target as HTMLInputElement).value)} />
      </div>
      <div ref={scroller} class="timeline" tabIndex={0} role="region" aria-label="Activities per location over time; scroll to move in time" onScroll={onScroll}>
        <div class="timeline-canvas" style={{ width: `${width}px`, height: `${geometry.height + HEADER_PX}px` }}>
          <div class="tl-days" style={{ width: `${width}px` }} aria-hidden="true">
            {days.map((d) => (
              <div key={d} class="tl-day" style={{ left: `${x(d)}px`, width: `${DAY * pxPerMs}px` }}>{dayShort(new Date(d))}</div>
            ))}
          </div>
          {geometry.rows.map((row, i) => (
            <div key={row.locationId ?? ""} class={`tl-row ${i % 2 ? "odd" : ""}`} style={{ top: `${HEADER_PX + row.top}px`, height: `${row.lanes * 30}px`, width: `${width}px` }}>
              <div class="tl-label" title={row.name}>{row.name}</div>
            </div>
          ))}
          {bars.map((bar) => (
            <a
              key={bar.id}
              href={href({ screen: "activity", id: bar.id })}
              class={`tl-bar st-${bar.status}`}
              data-activity-id={bar.id}
              data-start={new Date(bar.start).toISOString()}
              style={{ left: `${x(bar.start)}px`, top: `${HEADER_PX + bar.top + 3}px`, width: `${Math.max(6, (bar.end - bar.start) * pxPerMs)}px` }}
              aria-label={`${bar.title}, ${geometry.rows[bar.row]?.name ?? ""}, ${dateTimeLabel(new Date(bar.start))} to ${dateTimeLabel(new Date(bar.end))}`}
            >
              {bar.title}
            </a>
          ))}
        </div>
      </div>
    </section>
  );
}
