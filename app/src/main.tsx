/**
 * The fieldsync web app: sign in from the link's fragment, open the project from IndexedDB
 * (bootstrapping it the first time), and show the member's screens. The service worker
 * (`sw.ts`) keeps the shell, so the app opens with no network at all.
 */
import { initializeWasm } from "automerge-slim";
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";

import { parseFragment, signOut, takeSession, type Session } from "./session.js";
import { AppStore } from "./store.js";
import { Shell } from "./views/shell.js";

interface AppHandle {
  store: AppStore | null;
  timings: Record<string, number>;
}

const handle: AppHandle = { store: null, timings: {} };
(window as unknown as { fieldsyncApp: AppHandle }).fieldsyncApp = handle;

function SignIn({ onSession }: { onSession: (s: Session) => void }) {
  const [link, setLink] = useState("");
  const [error, setError] = useState<string | null>(null);
  return (
    <main class="sign-in" id="main">
      <h1>fieldsync</h1>
      <p>Open the link <code>fieldsync demo</code> or <code>fieldsync token --project …</code> printed, or paste it here.</p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const session = parseFragment(link.includes("#") ? link.slice(link.indexOf("#")) : link);
          if (session === null) setError("That link has no token and project: it should end in #token=…&project=…");
          else {
            localStorage.setItem("fieldsync.session", JSON.stringify(session));
            onSession(session);
          }
        }}
      >
        <label for="link">Sign-in link</label>
        <input id="link" value={link} onInput={(e) => setLink((e.target as HTMLInputElement).value)} autoComplete="off" />
        <button type="submit">Sign in</button>
        {error && <p role="alert" class="danger">{error}</p>}
      </form>
    </main>
  );
}

function App() {
  const [session, setSession] = useState<Session | null>(() => takeSession());
  const [store, setStore] = useState<AppStore | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    if (session === null) return;
    let cancelled = false;
    AppStore.open(session).then(
      (opened) => {
        if (cancelled) return void opened.close();
        handle.store = opened;
        handle.timings.storeOpened = performance.now();
        setStore(opened);
      },
      (e: unknown) => setError(e instanceof Error ? `${e.name}: ${e.message}` : String(e)),
    );
    return () => {
      cancelled = true;
    };
  }, [session]);
  if (session === null) return <SignIn onSession={setSession} />;
  if (error !== null) {
    return (
      <main class="sign-in" id="main">
        <h1>Cannot open the project</h1>
        <p role="alert">{error}</p>
        <button type="button" onClick={() => { signOut(); location.reload(); }}>Sign in again</button>
      </main>
    );
  }
  if (store === null) return <main class="sign-in" id="main" aria-busy="true"><p>Opening the project…</p></main>;
  return (
    <Shell
      store={store}
      onSignOut={() => {
        signOut();
        void store.close().then(() => location.reload());
      }}
    />
  );
}

await initializeWasm(fetch(new URL("automerge.wasm", import.meta.url)));
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("sw.js", { scope: "./" }).catch((e: unknown) => console.warn("no offline shell:", e));
}
render(<App />, document.getElementById("root")!);
