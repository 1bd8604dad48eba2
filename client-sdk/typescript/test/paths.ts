// Where the repository's files are, seen from the compiled tests (dist/test).
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const REPOSITORY = join(PACKAGE, "..", "..");
export const CONTRACT = join(REPOSITORY, "contract");
