/**
 * Who is signed in: a bearer token and the project it opens, taken once from the link
 * `fieldsync demo` / `fieldsync token --project` prints (`/app/#token=…&project=…`), kept in
 * localStorage (the app opens offline), and wiped from the address bar at once so it is not
 * left in the history, a bookmark or a screenshot.
 */
export interface Session {
  readonly token: string;
  readonly projectId: string;
}

const KEY = "fieldsync.session";

export function parseFragment(hash: string): Session | null {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const token = params.get("token");
  const projectId = params.get("project");
  return token && projectId ? { token, projectId } : null;
}

/** The session from the URL fragment (stored, and removed from the address bar), else the stored one. */
export function takeSession(): Session | null {
  const fromLink = parseFragment(location.hash);
  if (fromLink !== null) {
    localStorage.setItem(KEY, JSON.stringify(fromLink));
    history.replaceState(null, "", location.pathname + location.search);
    return fromLink;
  }
  const stored = localStorage.getItem(KEY);
  if (stored === null) return null;
  try {
    const session = JSON.parse(stored) as Partial<Session>;
    return typeof session.token === "string" && typeof session.projectId === "string" ? { token: session.token, projectId: session.projectId } : null;
  } catch {
    return null;
  }
}

export function signOut(): void {
  localStorage.removeItem(KEY);
}

/** A small per-project cache of what the app learned online (the member's level, user id). */
export function remember(projectId: string, key: string, value: string): void {
  localStorage.setItem(`fieldsync.${projectId}.${key}`, value);
}

export function recalled(projectId: string, key: string): string | null {
  return localStorage.getItem(`fieldsync.${projectId}.${key}`);
}
