/**
 * What Node 20 needs besides the main entry: a SQLite storage adapter (better-sqlite3) and
 * a WebSocket (Node 20 has none built in; `ws` is used).
 */
import WebSocket from "ws";

import type { SocketLike, WebSocketFactory } from "./sync-loop.js";

export { SqliteStorage } from "./store/sqlite.js";

/** A `WebSocketFactory` on the `ws` package, accepting the server's largest frames. */
export const nodeWebSocket: WebSocketFactory = (url, maxBytes) =>
  new WebSocket(url, { maxPayload: maxBytes, perMessageDeflate: false }) as unknown as SocketLike;
