/** The browser build (`bundle/`): the SDK, the IndexedDB storage adapter, and Automerge's
 * wasm initialisers for the build that leaves the wasm out (`fieldsync.slim.js`). */
export * from "./index.js";
export { IndexedDbStorage } from "./store/indexeddb.js";
export { initializeWasm, initializeBase64Wasm } from "@automerge/automerge";
