/**
 * Attachments on the device: the upload queue's sender and what an app is told about an
 * attachment (docs/attachments.md has the server's side).
 *
 * `Project.attach` keeps the bytes in the storage adapter (under their SHA-256, so the same
 * photo attached twice is kept once), queues the upload beside the outbox and adds the new id
 * to the entity's `attachments` list, in one storage write. The `Uploader` then sends waiting
 * uploads whenever the client runs with a server: it asks the server how many bytes it holds
 * and continues from there part by part, so a cut costs at most the part in flight. Network
 * errors, 5xx, 401 and 429 are tried again with the client's backoff (never sooner than a
 * `Retry-After`); any other refusal is final and marks the upload `refused` with the
 * server's code. Bytes this project already uploaded under another id are not sent again:
 * the first part is only the head the server reads the type from, and the server completes
 * the upload from the copy it holds.
 */
import type { Backoff } from "./backoff.js";
import { FieldsyncError } from "./errors.js";
import type { ProjectReplica } from "./replica.js";
import type { Storage, UploadRow } from "./store/types.js";
import { httpUrl } from "./sync-loop.js";

/** Bytes per upload request (the server takes up to 16 MiB; smaller parts lose less to a cut). */
export const PART_BYTES = 1024 * 1024;
/** The first part when the server should already hold the bytes: at least the 32 bytes it
 * reads the type from. */
const HEAD_BYTES = 64;
const REQUEST_TIMEOUT_MS = 30_000;

/** `small` (256 px) and `large` (1280 px) JPEG thumbnails, or the shared copy (`content`). */
export type AttachmentVariant = "small" | "large" | "content";

/**
 * Where an attachment stands: `local` (on this device only, waiting for the network),
 * `uploading` (the server holds `received` of `size` bytes), then the server's word, synced
 * like any entity: `uploaded`, `processing`, `ready` (thumbnails can be downloaded),
 * `failed` (`code`, `message`: the server refused the upload, or processing failed).
 * `unknown`: another device's attachment the server has not finished receiving yet.
 */
export type AttachmentStatusName = "local" | "uploading" | "uploaded" | "processing" | "ready" | "failed" | "unknown";

export interface AttachmentStatus {
  readonly attachmentId: string;
  readonly status: AttachmentStatusName;
  /** Bytes the server holds, when known. */
  readonly received: number | null;
  readonly size: number | null;
  readonly code: string | null;
  readonly message: string | null;
  /** This device attached it and keeps its bytes (`Project.localCopy`). */
  readonly hasLocalCopy: boolean;
}

export interface LocalCopy {
  readonly data: Uint8Array;
  readonly contentType: string | null;
  readonly fileName: string | null;
}

export function attachmentUrl(endpoint: string, projectId: string, attachmentId: string, variant?: AttachmentVariant): string {
  const tail = variant === undefined ? "" : variant === "content" ? "/content" : `/thumbnails/${variant}`;
  return httpUrl(endpoint, `/projects/${encodeURIComponent(projectId)}/attachments/${encodeURIComponent(attachmentId)}${tail}`);
}

/** A `Retry-After` header (seconds or an HTTP date) in milliseconds; null when absent or unreadable. */
export function retryAfterMs(header: string | null, now = Date.now()): number | null {
  if (header === null) return null;
  const value = header.trim();
  if (/^\d{1,9}$/u.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** The server refused an upload for good (its code: `unsupported_type`, `too_large` ...). */
export class UploadRefused extends FieldsyncError {
  constructor(readonly code: string, message: string) {
    super(`${code}: ${message}`);
  }
}

/** Try again later (network, 5xx, 401, 429), not before `afterMs` when the server said so. */
export class RetryLater extends FieldsyncError {
  constructor(message: string, readonly afterMs: number | null) {
    super(message);
  }
}

interface Answer {
  readonly code?: unknown;
  readonly message?: unknown;
  readonly received?: unknown;
  readonly status?: unknown;
  readonly limit?: unknown;
}

async function answerOf(response: Response): Promise<Answer> {
  try {
    const body: unknown = await response.json();
    return body !== null && typeof body === "object" ? (body as Answer) : {};
  } catch {
    return {};
  }
}

/** What a failed answer means: try again later, or refused for good. */
export function failureOf(status: number, answer: Answer, retryAfter: string | null): RetryLater | UploadRefused {
  const code = typeof answer.code === "string" ? answer.code : `http_${status}`;
  const message = typeof answer.message === "string" ? answer.message : `the server answered ${status}`;
  if (status >= 500 || status === 401 || status === 408 || status === 429) return new RetryLater(`${status} ${code}: ${message}`, retryAfterMs(retryAfter));
  return new UploadRefused(code, message);
}

function receivedOf(answer: Answer): number {
  const received = answer.received;
  if (typeof received !== "number" || !Number.isSafeInteger(received) || received < 0) throw new RetryLater("the server's answer has no byte count", null);
  return received;
}

/** What the uploader needs of the client. */
export interface UploadHost {
  readonly storage: Storage;
  /** The open projects: their uploads are sent, their storage calls run in their queue. */
  replicas(): ReadonlyMap<string, ProjectReplica>;
  currentToken(): Promise<string>;
  /** An upload moved (progress, done, refused). */
  uploadChanged(projectId: string, attachmentId: string): void;
}

export interface UploaderOptions {
  /** The sync endpoint (`ws(s)://host/.../sync`); HTTP addresses are made from it. */
  readonly endpoint: string;
  readonly fetch: typeof fetch;
  readonly backoff: Backoff;
  readonly partBytes?: number;
}

function key(projectId: string, attachmentId: string): string {
  return `${projectId}\u0000${attachmentId}`;
}

/** Sends the open projects' waiting uploads, one at a time, while started. */
export class Uploader {
  /** The last reason sending stopped (cleared by a round that sends everything). */
  lastError: Error | null = null;
  private readonly progress = new Map<string, number>();
  private partBytes: number;
  private running: Promise<void> | null = null;
  private stopped = true;
  private woken = false;
  private wakeUp: (() => void) | null = null;
  private inFlight: AbortController | null = null;

  constructor(private readonly host: UploadHost, private readonly options: UploaderOptions) {
    this.partBytes = options.partBytes ?? PART_BYTES;
    if (!Number.isSafeInteger(this.partBytes) || this.partBytes < HEAD_BYTES) throw new RangeError(`upload parts are at least ${HEAD_BYTES} bytes`);
  }

  /** Bytes the server holds of an upload this run is sending (undefined when not sending it). */
  received(projectId: string, attachmentId: string): number | undefined {
    return this.progress.get(key(projectId, attachmentId));
  }

  start(): void {
    if (this.running !== null) return;
    this.stopped = false;
    this.running = this.loop();
  }

  /** Look at the queue now (an attach, the network back) instead of after the backoff delay. */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.inFlight?.abort();
    this.wake();
    await this.running;
    this.running = null;
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      this.woken = false;
      let delay: number | null = null;
      try {
        await this.sendAll();
        this.options.backoff.reset();
        this.lastError = null;
      } catch (error) {
        if (this.stopped) break;
        this.lastError = error instanceof Error ? error : new Error(String(error));
        const wait = this.options.backoff.nextDelay();
        const after = error instanceof RetryLater ? error.afterMs : null;
        delay = after === null ? wait : Math.max(wait, after);
      }
      if (this.stopped || this.woken) continue;
      await new Promise<void>((resolve) => {
        const timer = delay === null ? undefined : setTimeout(resolve, delay);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = null;
    }
  }

  private async sendAll(): Promise<void> {
    const storage = this.host.storage;
    for (const [projectId, replica] of this.host.replicas()) {
      const waiting = await replica.run(() => storage.uploads(projectId, "waiting"));
      for (const row of waiting) {
        if (this.stopped) return;
        let state: UploadRow["state"] = "uploaded";
        let refusal: UploadRefused | null = null;
        try {
          await this.send(replica, row);
        } catch (error) {
          if (!(error instanceof UploadRefused)) throw error;
          state = "refused";
          refusal = error;
        }
        await replica.run(() =>
          storage.write([{ op: "setUpload", projectId, attachmentId: row.attachmentId, state, code: refusal?.code ?? null, message: refusal?.message ?? null }]),
        );
        this.progress.delete(key(projectId, row.attachmentId));
        this.host.uploadChanged(projectId, row.attachmentId);
      }
    }
  }

  /** One upload from where the server stands; returns when the server holds it. */
  private async send(replica: ProjectReplica, row: UploadRow): Promise<void> {
    const url = attachmentUrl(this.options.endpoint, row.projectId, row.attachmentId);
    const token = await this.host.currentToken();
    const auth = { Authorization: `Bearer ${token}` };
    const status = await this.call(url, { headers: auth });
    let received = 0;
    if (status.status === 200) {
      const answer = await answerOf(status);
      if (answer.status !== "uploading") return; // the server has it already
      received = receivedOf(answer);
    } else if (status.status !== 404) {
      throw failureOf(status.status, await answerOf(status), status.headers.get("retry-after"));
    } else await status.body?.cancel();
    const data = await replica.run(() => this.host.storage.blob(row.sha256));
    if (data === undefined) throw new UploadRefused("local_copy_missing", "the attached bytes are no longer in the local storage");
    let headOnly = received === 0 && data.length > HEAD_BYTES && (await this.uploadedBefore(replica, row));
    for (;;) {
      this.setProgress(row, received);
      const end = Math.min(data.length, received + (headOnly ? HEAD_BYTES : this.partBytes));
      headOnly = false;
      const response = await this.call(url + "/content", {
        method: "PATCH",
        headers: {
          ...auth,
          "Content-Type": "application/octet-stream",
          "Upload-Offset": String(received),
          "Upload-Length": String(data.length),
          "Upload-Sha256": row.sha256,
          ...(row.fileName ? { "Upload-Name": encodeURIComponent(row.fileName) } : {}),
        },
        body: data.slice(received, end),
      });
      if (response.status === 200 || response.status === 201) {
        await response.body?.cancel();
        return;
      }
      const answer = await answerOf(response);
      if (response.status === 202 || (response.status === 409 && answer.code === "offset_mismatch")) {
        received = receivedOf(answer);
        continue;
      }
      if (response.status === 413 && answer.code === "chunk_too_large" && typeof answer.limit === "number" && answer.limit >= HEAD_BYTES && answer.limit < this.partBytes) {
        this.partBytes = answer.limit; // a server configured for smaller parts
        continue;
      }
      throw failureOf(response.status, answer, response.headers.get("retry-after"));
    }
  }

  /** This project already uploaded these bytes under another id. */
  private async uploadedBefore(replica: ProjectReplica, row: UploadRow): Promise<boolean> {
    const done = await replica.run(() => this.host.storage.uploads(row.projectId, "uploaded"));
    return done.some((other) => other.sha256 === row.sha256 && other.attachmentId !== row.attachmentId);
  }

  private setProgress(row: UploadRow, received: number): void {
    const k = key(row.projectId, row.attachmentId);
    if (this.progress.get(k) === received) return;
    this.progress.set(k, received);
    this.host.uploadChanged(row.projectId, row.attachmentId);
  }

  /** One request with a time limit; stopping the uploader aborts it. Network failures
   * become RetryLater. */
  private async call(url: string, init: RequestInit): Promise<Response> {
    const controller = new AbortController();
    this.inFlight = controller;
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      return await this.options.fetch(url, { ...init, signal: controller.signal });
    } catch (error) {
      throw new RetryLater(`${init.method ?? "GET"} ${url}: ${error instanceof Error ? error.message : String(error)}`, null);
    } finally {
      clearTimeout(timer);
      this.inFlight = null;
    }
  }
}
