// Builds the browser bundles into bundle/ and prints their sizes (minified, and gzipped):
//   fieldsync.js       the SDK with Automerge's wasm inlined (base64): one file, nothing to set up
//   fieldsync.slim.js  the SDK without the wasm: serve automerge.wasm and call
//                      `await Fieldsync.initializeWasm(fetch("automerge.wasm"))` first
// Both are IIFEs that define the global `Fieldsync`. Run `npm run build` first.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = join(dirname(fileURLToPath(import.meta.url)), "..");
const automerge = join(here, "node_modules", "@automerge", "automerge", "dist");
const out = join(here, "bundle");
mkdirSync(out, { recursive: true });

const variants = {
  "fieldsync.js": join(automerge, "mjs", "entrypoints", "fullfat_base64.js"),
  "fieldsync.slim.js": join(automerge, "mjs", "entrypoints", "slim.js"),
};
for (const [name, entry] of Object.entries(variants)) {
  await build({
    entryPoints: [join(here, "dist", "src", "browser.js")],
    outfile: join(out, name),
    bundle: true,
    minify: true,
    format: "iife",
    globalName: "Fieldsync",
    platform: "browser",
    target: "es2022",
    alias: { "@automerge/automerge": entry },
    logLevel: "warning",
  });
}
copyFileSync(join(automerge, "automerge.wasm"), join(out, "automerge.wasm"));

const size = (file) => {
  const bytes = readFileSync(join(out, file));
  return { bytes: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
};
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
const full = size("fieldsync.js");
const slim = size("fieldsync.slim.js");
const wasm = size("automerge.wasm");
console.log(`fieldsync.js (SDK + Automerge + wasm inlined): ${kib(full.bytes)} minified, ${kib(full.gzip)} min+gzip`);
console.log(`fieldsync.slim.js (SDK + Automerge JS, no wasm): ${kib(slim.bytes)} minified, ${kib(slim.gzip)} min+gzip`);
console.log(`automerge.wasm (served next to the slim build): ${kib(wasm.bytes)}, ${kib(wasm.gzip)} gzip`);
console.log(`bundle min+gzip: ${kib(slim.gzip)} without the wasm, ${kib(slim.gzip + wasm.gzip)} with it as a file, ${kib(full.gzip)} with it inlined`);
