// A TypeScript client app in its own process, for tests/typescript/test_kill.py to SIGKILL:
//   node dist/test/kill-worker.js edit STORE PROJECT COUNT PREFIX
//     offline: create COUNT locations, ids PREFIX-0, PREFIX-1, ... (entity ids are unique
//     across projects, so each test picks its own prefix)
//   node dist/test/kill-worker.js sync STORE PROJECT URL TOKEN
//     print "pending N" (from the store, before syncing), sync everything, print "synced N"
//     with the number of locations the local copy then holds.
import { FieldsyncClient } from "../src/index.js";
import { nodeWebSocket, SqliteStorage } from "../src/node.js";

const [mode, store, projectId, ...rest] = process.argv.slice(2);

async function main(): Promise<void> {
  if (mode === "edit") {
    const client = await FieldsyncClient.create({ url: null, token: "", storage: new SqliteStorage(store!) });
    const project = await client.openProject(projectId!);
    for (let i = 0; i < Number(rest[0]); i++) await project.create("location", { name: `Site ${i}` }, { entityId: `${rest[1]}-${i}` });
    await client.close();
    console.log("edited");
    return;
  }
  const [url, token] = rest;
  const storage = new SqliteStorage(store!);
  console.log(`pending ${(await storage.outbox(projectId!, "pending")).length}`);
  const client = await FieldsyncClient.create({ url: url!, token: token!, storage, webSocket: nodeWebSocket, backoffBaseMs: 50, backoffCapMs: 250 });
  const project = await client.openProject(projectId!);
  await client.waitSynced(60_000);
  console.log(`synced ${(await project.ids("location")).length}`);
  await client.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
