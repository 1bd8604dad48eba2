/**
 * What Node 20 needs besides the main entry: a SQLite storage adapter (better-sqlite3) and
 * a WebSocket (Node 20 has none built in; `ws` is used).
 */
import WebSocket from "ws";

import { retryAfterMs } from "./backoff.js";
import type { SocketLike, WebSocketFactory } from "./sync-loop.js";

export { SqliteStorage } from "./store/sqlite.js";

/** A `WebSocketFactory` on the `ws` package, accepting the server's largest frames. A refused
 * upgrade (429, 503) leaves its `Retry-After` on the socket, so the sync loop waits as asked. */
export const nodeWebSocket: WebSocketFactory = (url, maxBytes) => {
  const socket = new WebSocket(url, { maxPayload: maxBytes, perMessageDeflate: false });
  socket.on("unexpected-response", (request, response) => {
    const header = response.headers["retry-after"];
    (socket as unknown as { retryAfterMs: number }).retryAfterMs = retryAfterMs(Array.isArray(header) ? header[0] : header);
    // As ws does without this listener: the handshake fails with error and close events.
    request.destroy(new Error(`Unexpected server response: ${response.statusCode ?? 0}`));
  });
  return socket as unknown as SocketLike;
};
