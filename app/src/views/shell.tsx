/** The frame around every screen: header with navigation, the screen, the status bar. */
import { href, useRoute, type Route } from "../router.js";
import type { AppStore } from "../store.js";
import { ActivityDetail } from "./activity.js";
import { SummoningBoard } from "./board.js";
import { Conflicts } from "./conflicts.js";
import { MembersHealth } from "./health.js";
import { MyPlan } from "./plan.js";
import { StatusBar } from "./status-bar.js";
import { Timeline } from "./timeline.js";
import { useStore } from "./use-store.js";

interface NavItem {
  readonly route: Route;
  readonly label: string;
}

function navItems(store: AppStore): NavItem[] {
  const items: NavItem[] = [];
  if (store.level !== "lead") items.push({ route: { screen: "plan" }, label: "My plan" });
  items.push({ route: { screen: "conflicts" }, label: "Conflicts" });
  if (store.level === "lead" || store.level === "viewer") {
    items.push({ route: { screen: "timeline" }, label: "Timeline" }, { route: { screen: "board" }, label: "Summonings" }, { route: { screen: "health" }, label: "Sync health" });
  }
  return items;
}

function Screen({ store, route }: { store: AppStore; route: Route }) {
  switch (route.screen) {
    case "plan": return <MyPlan store={store} />;
    case "activity": return <ActivityDetail key={route.id} store={store} id={route.id} />;
    case "conflicts": return <Conflicts store={store} all={store.level === "lead" || store.level === "viewer"} />;
    case "timeline": return <Timeline store={store} />;
    case "board": return <SummoningBoard store={store} />;
    case "health": return <MembersHealth store={store} />;
  }
}

export function Shell({ store, onSignOut }: { store: AppStore; onSignOut: () => void }) {
  useStore(store);
  const route = useRoute() ?? (store.level === "lead" ? { screen: "timeline" as const } : { screen: "plan" as const });
  const settings = [...store.entities.project_settings.values()][0];
  const openConflicts = store.conflicts.filter((c) => c.open).length;
  return (
    <div class="app" data-level={store.level ?? "unknown"}>
      <header class="top">
        <div class="brand">
          <span class="project">{settings?.name ?? "fieldsync"}</span>
          <span class="muted who" data-testid="who">
            {store.userId === null ? "not connected yet" : `${store.personName(store.userId)} · ${store.level ?? "level unknown"}`}
          </span>
        </div>
        <nav aria-label="Screens">
          <ul>
            {navItems(store).map((item) => (
              <li key={item.label}>
                <a href={href(item.route)} aria-current={item.route.screen === route.screen ? "page" : undefined}>
                  {item.label}
                  {item.route.screen === "conflicts" && openConflicts > 0 && <span class="count" aria-label={`${openConflicts} open`}>{openConflicts}</span>}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <button type="button" class="link" onClick={onSignOut}>Sign out</button>
      </header>
      <main id="main" tabIndex={-1}>
        <Screen store={store} route={route} />
      </main>
      <StatusBar store={store} />
    </div>
  );
}
