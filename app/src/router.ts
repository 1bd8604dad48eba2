/** Screens live in the URL fragment (`#/activity/ID`), so reloads and the back button work offline. */
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { readonly screen: "plan" }
  | { readonly screen: "activity"; readonly id: string }
  | { readonly screen: "conflicts" }
  | { readonly screen: "timeline" }
  | { readonly screen: "board" }
  | { readonly screen: "health" };

export function parseRoute(hash: string): Route | null {
  const [screen, id] = hash.replace(/^#\/?/, "").split("/");
  switch (screen) {
    case "": case undefined: return null;
    case "plan": return { screen: "plan" };
    case "activity": return id ? { screen: "activity", id: decodeURIComponent(id) } : null;
    case "conflicts": return { screen: "conflicts" };
    case "timeline": return { screen: "timeline" };
    case "board": return { screen: "board" };
    case "health": return { screen: "health" };
    default: return null;
  }
}

export const href = (route: Route): string => (route.screen === "activity" ? `#/activity/${encodeURIComponent(route.id)}` : `#/${route.screen}`);

export function useRoute(): Route | null {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const changed = (): void => setRoute(parseRoute(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}
