// The README's quick start: open the demo project, create an activity, edit it, sync.
//   npm ci && npm run build
//   node examples/quickstart.mjs --url http://127.0.0.1:8000 --project PROJECT_ID --token LEAD_TOKEN
import { parseArgs } from "node:util";

import { FieldsyncClient, ValidationError } from "../dist/src/index.js";
import { nodeWebSocket, SqliteStorage } from "../dist/src/node.js";

const { values: args } = parseArgs({ options: { url: { type: "string" }, project: { type: "string" }, token: { type: "string" }, store: { type: "string", default: "tablet.db" } } });

const client = await FieldsyncClient.create({
  url: args.url,
  token: args.token,
  storage: new SqliteStorage(args.store),
  webSocket: nodeWebSocket,
});
client.onStatus((status) => console.log(`status: ${status.connection}, ${status.pending} waiting`));
const project = await client.openProject(args.project); // the first time: the snapshot

const [planId] = await project.ids("plan");
const activityId = await project.create("activity", {
  plan_id: planId,
  title: "Core sampling",
  description: "Take three cores.", // collaborative text
  starts_at: new Date("2027-06-02T08:00:00Z"),
  ends_at: new Date("2027-06-02T14:00:00Z"),
  status: "planned",
});
await project.update("activity", activityId, { status: "confirmed", description: "Take four cores." });
await project.insertItem("activity", activityId, "tasks", 0, { title: "Calibrate drill", done: false });
try {
  await project.update("activity", activityId, { status: "maybe" });
} catch (error) {
  if (!(error instanceof ValidationError)) throw error;
  console.log("refused locally:", error.violations.map((v) => `${v.field}: expected ${v.expected}, got ${v.got}`));
}
await client.waitSynced(30_000);
console.log(await project.get("activity", activityId));
console.log(`${(await project.conflicts()).length} open conflicts; cursor ${project.cursor}`);
await client.close();
