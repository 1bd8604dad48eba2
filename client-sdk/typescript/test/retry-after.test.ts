// A busy server's retry hint (503 + Retry-After on the upgrade) is obeyed in Node, with jitter.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import { Backoff, retryAfterMs } from "../src/backoff.js";
import { FieldsyncClient, MemoryStorage } from "../src/index.js";
import { nodeWebSocket } from "../src/node.js";

test("a hint is waited at least, spread over up to half as long again", () => {
  const low = new Backoff(100, 1000, () => 0);
  assert.equal(low.nextDelay(2000), 2000);
  const high = new Backoff(100, 1000, () => 0.999);
  assert.equal(Math.round(high.nextDelay(2000)), 2999);
  assert.equal(new Backoff(100, 1000, () => 0.5).nextDelay(0), 50, "no hint: the backoff alone");
  assert.equal(retryAfterMs("3"), 3000);
  assert.equal(retryAfterMs("0.5"), 500);
  for (const bad of [undefined, "", "soon", "-1", "0", "Fri, 31 Dec 1999 23:59:59 GMT"]) assert.equal(retryAfterMs(bad), 0, String(bad));
  assert.equal(retryAfterMs("99999"), 600_000, "bounded");
});

test("a refused upgrade's Retry-After reaches the socket before its close event", async () => {
  const server = createServer((_request, response) => response.end());
  server.on("upgrade", (_request, socket) => {
    socket.end("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  try {
    const socket = nodeWebSocket(`ws://127.0.0.1:${port}/sync`, 1 << 20);
    const closed = await new Promise<number>((resolve) => {
      socket.onerror = () => undefined;
      socket.onclose = (event) => resolve(event.code);
    });
    assert.equal(closed, 1006);
    assert.equal(socket.retryAfterMs, 2000);
  } finally {
    server.close();
  }
});

test("the sync loop waits out the hint instead of its own short backoff", async () => {
  let upgrades = 0;
  const server = createServer((_request, response) => response.end());
  server.on("upgrade", (_request, socket) => {
    upgrades += 1;
    socket.end("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  const client = await FieldsyncClient.create({ url: `ws://127.0.0.1:${port}`, token: "t", storage: new MemoryStorage(), webSocket: nodeWebSocket, backoffBaseMs: 5, backoffCapMs: 20, httpSnapshots: false });
  try {
    await client.openProject("p-1", { timeoutMs: 200 }).catch(() => undefined); // connects
    await new Promise((resolve) => setTimeout(resolve, 1600));
    // Its own backoff (at most 20 ms) would have made dozens of attempts; the hint (1 to
    // 1.5 s) allows two.
    assert.ok(upgrades >= 1 && upgrades <= 2, `${upgrades} attempts`);
  } finally {
    await client.close();
    server.close();
  }
});
