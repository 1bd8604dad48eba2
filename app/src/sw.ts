/// <reference lib="webworker" />
/**
 * The offline shell: the app's files, cached under a versioned name when the worker installs
 * (the build sets `SHELL_VERSION` to a hash of them), served from the cache first, old
 * versions' caches deleted when a new worker activates. Data never goes through here: it
 * lives in IndexedDB, and sync, snapshots and the API go to the network untouched.
 */
declare const SHELL_VERSION: string;
declare const SHELL_FILES: string[];

const worker = self as unknown as ServiceWorkerGlobalScope;
const PREFIX = "fieldsync-app-";
const CACHE = `${PREFIX}${SHELL_VERSION}`;
const scope = new URL(worker.registration.scope);

worker.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(CACHE).then((cache) => cache.addAll(SHELL_FILES.map((f) => new URL(f, scope).href))).then(() => worker.skipWaiting()),
  );
});

worker.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n.startsWith(PREFIX) && n !== CACHE).map((n) => caches.delete(n))))
      .then(() => worker.clients.claim()),
  );
});

worker.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname)) return;
  // A navigation to any screen of the app is the shell's index.html.
  const key = request.mode === "navigate" ? new URL("index.html", scope).href : url.origin + url.pathname;
  event.respondWith(
    caches.open(CACHE).then(async (cache) => (await cache.match(key)) ?? fetch(request)),
  );
});
