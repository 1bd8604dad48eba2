// Builds the app into dist/ (served by `fieldsync serve` under /app/) and its browser test
// driver into test-dist/. Run by `npm run build`, after the SDK's own build.
//   dist/app.js          the app, the SDK and Automerge's JavaScript, one ES module
//   dist/automerge.wasm  Automerge's wasm, compiled while it streams in
//   dist/sw.js           the service worker, with the shell's file list and a version hash
//   dist/*               index.html, styles.css, the manifest and icons, from static/
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const sdk = join(here, "..", "client-sdk", "typescript");
const automergeDist = join(sdk, "node_modules", "@automerge", "automerge", "dist");
const automerge = join(automergeDist, "mjs", "entrypoints", "slim.js");

rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
for (const name of readdirSync(join(here, "static"))) copyFileSync(join(here, "static", name), join(dist, name));

/** A square PNG icon of one colour with a lighter band (installable apps want PNG sizes too). */
function png(size) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const rows = [];
  for (let y = 0; y < size; y++) {
    const row = Buffer.alloc(1 + size * 3);
    for (let x = 0; x < size; x++) {
      const mountain = y > size * 0.35 + Math.abs(x - size * 0.45) * 0.9 && y < size * 0.75;
      const [r, g, b] = mountain ? [255, 255, 255] : [0x1f, 0x5f, 0x8b];
      row.set([r, g, b], 1 + x * 3);
    }
    rows.push(row);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", header), chunk("IDAT", deflateSync(Buffer.concat(rows))), chunk("IEND", Buffer.alloc(0))]);
}
copyFileSync(join(automergeDist, "automerge.wasm"), join(dist, "automerge.wasm"));
writeFileSync(join(dist, "icon-192.png"), png(192));
writeFileSync(join(dist, "icon-512.png"), png(512));

await build({
  entryPoints: [join(here, "src", "main.tsx")],
  outfile: join(dist, "app.js"),
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  jsx: "automatic",
  jsxImportSource: "preact",
  alias: { "@automerge/automerge": automerge, "automerge-slim": automerge },
  logLevel: "warning",
});

const shell = readdirSync(dist).filter((name) => name !== "sw.js").sort();
const version = createHash("sha256");
for (const name of shell) version.update(name).update(readFileSync(join(dist, name)));
await build({
  entryPoints: [join(here, "src", "sw.ts")],
  outfile: join(dist, "sw.js"),
  bundle: true,
  minify: true,
  format: "iife",
  platform: "browser",
  target: "es2022",
  define: { SHELL_VERSION: JSON.stringify(version.digest("hex").slice(0, 16)), SHELL_FILES: JSON.stringify(["./", ...shell]) },
  logLevel: "warning",
});

await build({
  entryPoints: ["e2e.ts", "attach-e2e.ts", "timeline-bench.ts", "permissions-cli.ts"].map((name) => join(here, "test", name)),
  outdir: join(here, "test-dist"),
  bundle: true,
  format: "esm",
  platform: "node",
  target: "node20",
  packages: "external",
  logLevel: "warning",
});

const kib = (n) => `${(n / 1024).toFixed(0)} KiB`;
console.log(`dist/: ${shell.length + 1} files, app.js ${kib(readFileSync(join(dist, "app.js")).length)}`);
