// The app's evaluation of the write rules (src/permissions.ts) for a list of cases, so
// tests/app/test_permissions.py can compare it with the server's check_write:
//   node test-dist/permissions-cli.js cases.json   ->  one JSON array of booleans
import { readFileSync } from "node:fs";

import { mayEdit, type Level } from "../src/permissions.js";

interface Case {
  level: Level;
  userId: string;
  summonedTo: string[];
  entityType: string;
  entityId: string;
  values: Record<string, unknown>;
  field: string;
}

const cases = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as Case[];
console.log(JSON.stringify(cases.map((c) => mayEdit({ userId: c.userId, level: c.level, summonedTo: new Set(c.summonedTo) }, c.entityType, c.entityId, c.values, c.field))));
