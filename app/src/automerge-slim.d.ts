// Automerge without its wasm inlined (the build aliases this name to its `slim` entry, the
// one the SDK is bundled with): the wasm is a file of its own, compiled while it streams in.
declare module "automerge-slim" {
  export function initializeWasm(wasm: Response | Promise<Response> | BufferSource): Promise<void>;
}
