import { useEffect, useState } from "preact/hooks";

import type { AppStore } from "../store.js";

/** Re-render whenever the store changes. */
export function useStore(store: AppStore): number {
  const [version, setVersion] = useState(store.version);
  useEffect(() => store.subscribe(() => setVersion(store.version)), [store]);
  return version;
}
