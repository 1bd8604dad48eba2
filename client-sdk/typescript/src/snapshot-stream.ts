/**
 * Reading the body of `GET /projects/{id}/snapshot` as it arrives (no I/O): a sequence of
 * msgpack values (`snapshot_begin`, one map per entity, `conflicts` messages,
 * `snapshot_end`; see docs/protocol.md). The body comes from the network, so it gets the
 * bounds of a WebSocket frame: each record's end is found by skipping over it without
 * building anything, a record longer than any document can be is refused before it is
 * complete, and each complete record is decoded by the protocol's own bounded decoder.
 */
import { decodeServer, encode, ProtocolViolation } from "./codec/codec.js";
import { Reader, Truncated } from "./codec/reader.js";
import { DEFAULT_LIMITS, type Conflicts, type Limits, type SnapshotBegin, type SnapshotEnd, type SnapshotEntity } from "./generated/protocol.js";

const RECORD_OVERHEAD = 4096; // an entity record's keys, type and id around its document

export class SnapshotFormatError extends Error {}

export type SnapshotRecord = SnapshotBegin | (SnapshotEntity & { t?: undefined }) | Conflicts | SnapshotEnd;

export class SnapshotStream {
  begin: SnapshotBegin | null = null;
  end: SnapshotEnd | null = null;
  private buffer = new Uint8Array(0);
  private entities = 0;
  private readonly maxRecord: number;
  private readonly chunkPrefix: Uint8Array;

  constructor(readonly projectId: string, readonly limits: Limits = DEFAULT_LIMITS) {
    this.maxRecord = limits.max_document_bytes + RECORD_OVERHEAD;
    // An entity record is decoded as the one entity of a snapshot_chunk message.
    const wrapper = encode({ t: "snapshot_chunk", project_id: projectId, entities: [] });
    this.chunkPrefix = wrapper.slice(0, wrapper.length - 1); // without the empty array
  }

  /** The records complete so far. */
  feed(bytes: Uint8Array): SnapshotRecord[] {
    if (this.end !== null && bytes.length > 0) throw new SnapshotFormatError("bytes after snapshot_end");
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer);
    joined.set(bytes, this.buffer.length);
    const records: SnapshotRecord[] = [];
    let start = 0;
    while (start < joined.length && this.end === null) {
      const reader = new Reader(joined.subarray(start));
      try {
        reader.skip();
      } catch (error) {
        if (!(error instanceof Truncated)) throw new SnapshotFormatError(`not msgpack: ${(error as Error).message}`);
        if (joined.length - start > this.maxRecord) throw new SnapshotFormatError(`a record is longer than ${this.maxRecord} bytes`);
        break;
      }
      records.push(this.record(joined.subarray(start, start + reader.pos)));
      start += reader.pos;
    }
    this.buffer = joined.slice(start);
    return records;
  }

  /** The body has ended: the snapshot's end, or SnapshotFormatError if it is incomplete. */
  finish(): SnapshotEnd {
    if (this.end === null || this.buffer.length > 0) throw new SnapshotFormatError("the snapshot body ended early");
    return this.end;
  }

  private record(bytes: Uint8Array): SnapshotRecord {
    try {
      if (!this.namesType(bytes)) {
        if (this.begin === null) throw new SnapshotFormatError("an entity before snapshot_begin");
        const frame = new Uint8Array(this.chunkPrefix.length + 1 + bytes.length);
        frame.set(this.chunkPrefix);
        frame[this.chunkPrefix.length] = 0x91; // an array of one entity
        frame.set(bytes, this.chunkPrefix.length + 1);
        const chunk = decodeServer(frame, this.limits);
        if (chunk.t !== "snapshot_chunk") throw new SnapshotFormatError("not an entity record");
        this.entities += 1;
        if (this.entities > this.begin.entity_count) throw new SnapshotFormatError("more entities than snapshot_begin announced");
        return chunk.entities[0]!;
      }
      const message = decodeServer(bytes, this.limits);
      if (message.t === "snapshot_begin" && this.begin === null && message.project_id === this.projectId) return (this.begin = message);
      if (message.t === "conflicts" && this.begin !== null && message.project_id === this.projectId) return message;
      if (message.t === "snapshot_end" && this.begin !== null && message.cursor === this.begin.cursor && this.entities === this.begin.entity_count) {
        return (this.end = message);
      }
      throw new SnapshotFormatError(`${message.t} is out of place in the snapshot body`);
    } catch (error) {
      if (error instanceof ProtocolViolation) throw new SnapshotFormatError(error.message);
      throw error;
    }
  }

  private namesType(bytes: Uint8Array): boolean {
    try {
      const reader = new Reader(bytes);
      reader.open("map");
      return reader.key() === "t";
    } catch {
      return true; // let the decoder say what is wrong
    }
  }
}
