// The generated types are what scripts/generate-types.mjs makes from the contract now.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

import { PACKAGE } from "./paths.js";

test("src/generated is up to date with contract/", () => {
  const run = spawnSync(process.execPath, [join(PACKAGE, "scripts", "generate-types.mjs"), "--check"], { encoding: "utf8" });
  assert.equal(run.status, 0, run.stderr);
});
