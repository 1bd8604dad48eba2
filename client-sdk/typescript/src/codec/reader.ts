/**
 * A bounded reader of one msgpack frame: it walks containers itself and never lets a
 * declared length allocate anything before the bytes are there.
 *
 * msgpack libraries preallocate an array's slots from its header, so a few KB of nested
 * headers that each claim 65,535 items can cost tens of megabytes. This reader reads a
 * container's header, bounds its count, and reads the items one at a time; strings and
 * byte strings cost at most their own length, which the frame's length already bounds.
 * It follows the server's reader (`sync/codec.py`) step for step, so both refuse the same
 * frames with the same codes (the conformance vectors check that).
 */

export type Kind = "int" | "map" | "array" | "str" | "bytes" | "ext" | "nil" | "bool" | "float" | "invalid";

/** What the peer must be told about a frame it sent; the decoder throws nothing else. */
export class ProtocolViolation extends Error {
  constructor(
    readonly code: "malformed_frame" | "frame_too_large" | "unknown_message_type" | "invalid_message" | "too_many_entities" | "unsupported_version" | "handshake_required" | "already_handshaken",
    message: string,
    public pushId: number | null = null,
  ) {
    super(message);
    this.name = "ProtocolViolation";
  }
}

/** A well-formed value that is not what the message needs; the path is collected on the way out. */
export class FieldError extends Error {
  readonly path: string[];
  constructor(message: string, ...path: string[]) {
    super(message);
    this.path = path;
  }
  at(part: string): FieldError {
    this.path.push(part);
    return this;
  }
  where(root: string): string {
    return root + [...this.path].reverse().join("");
  }
}

export const malformed = (message: string): ProtocolViolation => new ProtocolViolation("malformed_frame", message);

/** The bytes end inside a value: in a stream, more may come. */
export class Truncated extends ProtocolViolation {
  constructor() {
    super("malformed_frame", "the frame ends inside a value");
  }
}

/** The msgpack nesting a skip may walk (what the server's msgpack-c allows). */
export const MAX_SKIP_DEPTH = 1024;
const INT64_MAX = 2n ** 63n - 1n;

function kindOf(first: number): Kind {
  if (first <= 0x7f || first >= 0xe0 || (first >= 0xcc && first <= 0xd3)) return "int";
  if (first <= 0x8f || first === 0xde || first === 0xdf) return "map";
  if (first <= 0x9f || first === 0xdc || first === 0xdd) return "array";
  if (first <= 0xbf || (first >= 0xd9 && first <= 0xdb)) return "str";
  if (first >= 0xc4 && first <= 0xc6) return "bytes";
  if ((first >= 0xc7 && first <= 0xc9) || (first >= 0xd4 && first <= 0xd8)) return "ext";
  if (first === 0xc0) return "nil";
  if (first === 0xc2 || first === 0xc3) return "bool";
  if (first === 0xca || first === 0xcb) return "float";
  return "invalid";
}

const KINDS: readonly Kind[] = Array.from({ length: 256 }, (_, b) => kindOf(b));
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export function codePoints(text: string): number {
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    count++;
  }
  return count;
}

export class Reader {
  pos = 0;
  private readonly view: DataView;

  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  restart(): Reader {
    return new Reader(this.buf);
  }

  trailing(): number {
    return this.buf.length - this.pos;
  }

  kind(): Kind {
    if (this.pos >= this.buf.length) throw new Truncated();
    const kind = KINDS[this.buf[this.pos]!]!;
    if (kind === "ext") throw malformed(`byte ${this.pos}: msgpack extension types are not used by this protocol`);
    if (kind === "invalid") throw malformed(`byte ${this.pos}: 0xc1 is not msgpack`);
    return kind;
  }

  private expect(wanted: Kind): void {
    const got = this.kind();
    if (got !== wanted) throw new FieldError(`expected ${wanted}, got ${got}`);
  }

  private need(bytes: number): void {
    if (this.pos + bytes > this.buf.length) throw new Truncated();
  }

  /** The item count of the map or array that comes next, without consuming it. */
  count(wanted: "map" | "array"): number {
    this.expect(wanted);
    const first = this.buf[this.pos]!;
    if (first === 0xdc || first === 0xde) {
      this.need(3);
      return this.view.getUint16(this.pos + 1);
    }
    if (first === 0xdd || first === 0xdf) {
      this.need(5);
      return this.view.getUint32(this.pos + 1);
    }
    return first & 0x0f;
  }

  /** Consume a map or array header; its item count. */
  open(wanted: "map" | "array", maxItems?: number): number {
    const count = this.count(wanted);
    if (maxItems !== undefined && count > maxItems) throw new FieldError(`at most ${maxItems} items, got ${count}`);
    const first = this.buf[this.pos]!;
    this.pos += first === 0xdc || first === 0xde ? 3 : first === 0xdd || first === 0xdf ? 5 : 1;
    return count;
  }

  /** Step over one value of any kind without building it (extensions included). */
  skip(): void {
    let pending = 1; // values still to skip at the current level and above
    const stack: number[] = [];
    while (pending > 0) {
      if (this.pos >= this.buf.length) throw new Truncated();
      const first = this.buf[this.pos]!;
      const kind = KINDS[first]!;
      pending--;
      if (kind === "map" || kind === "array") {
        const count = this.open(kind) * (kind === "map" ? 2 : 1);
        if (count > 0) {
          if (stack.length >= MAX_SKIP_DEPTH) throw malformed("values are nested too deeply");
          stack.push(pending);
          pending = count;
        }
      } else {
        this.pos += this.scalarSize(first);
        if (this.pos > this.buf.length) throw new Truncated();
      }
      while (pending === 0 && stack.length > 0) pending = stack.pop()!;
    }
  }

  /** The byte size of the scalar (or extension) starting with `first` at `pos`. */
  private scalarSize(first: number): number {
    if (first <= 0x7f || first >= 0xe0 || first === 0xc0 || first === 0xc2 || first === 0xc3) return 1;
    if (first >= 0xa0 && first <= 0xbf) return 1 + (first & 0x1f);
    const lengthAt = (bytes: number): number => {
      this.need(1 + bytes);
      return bytes === 1 ? this.buf[this.pos + 1]! : bytes === 2 ? this.view.getUint16(this.pos + 1) : this.view.getUint32(this.pos + 1);
    };
    switch (first) {
      case 0xcc: case 0xd0: return 2;
      case 0xcd: case 0xd1: return 3;
      case 0xce: case 0xd2: case 0xca: return 5;
      case 0xcf: case 0xd3: case 0xcb: return 9;
      case 0xd9: case 0xc4: return 2 + lengthAt(1);
      case 0xda: case 0xc5: return 3 + lengthAt(2);
      case 0xdb: case 0xc6: return 5 + lengthAt(4);
      case 0xd4: return 3;
      case 0xd5: return 4;
      case 0xd6: return 6;
      case 0xd7: return 10;
      case 0xd8: return 18;
      case 0xc7: return 3 + lengthAt(1);
      case 0xc8: return 4 + lengthAt(2);
      case 0xc9: return 6 + lengthAt(4);
    }
    throw malformed(`byte ${this.pos}: 0xc1 is not msgpack`);
  }

  key(): string {
    const kind = this.kind();
    if (kind !== "str") throw malformed(`map keys must be strings, got ${kind}`);
    return this.readStr();
  }

  string(maxChars?: number): string {
    this.expect("str");
    const value = this.readStr();
    if (maxChars !== undefined && value.length > maxChars) {
      const chars = codePoints(value);
      if (chars > maxChars) throw new FieldError(`at most ${maxChars} characters, got ${chars}`);
    }
    return value;
  }

  private readStr(): string {
    const first = this.buf[this.pos]!;
    let length: number;
    let header: number;
    if (first >= 0xa0 && first <= 0xbf) [length, header] = [first & 0x1f, 1];
    else if (first === 0xd9) [length, header] = [(this.need(2), this.buf[this.pos + 1]!), 2];
    else if (first === 0xda) [length, header] = [(this.need(3), this.view.getUint16(this.pos + 1)), 3];
    else [length, header] = [(this.need(5), this.view.getUint32(this.pos + 1)), 5];
    this.need(header + length);
    const start = this.pos + header;
    this.pos = start + length;
    try {
      return utf8.decode(this.buf.subarray(start, start + length));
    } catch {
      throw malformed("a string is not valid UTF-8");
    }
  }

  blob(): Uint8Array {
    this.expect("bytes");
    return this.readBin();
  }

  private readBin(): Uint8Array {
    const first = this.buf[this.pos]!;
    const header = first === 0xc4 ? 2 : first === 0xc5 ? 3 : 5;
    this.need(header);
    const length = header === 2 ? this.buf[this.pos + 1]! : header === 3 ? this.view.getUint16(this.pos + 1) : this.view.getUint32(this.pos + 1);
    this.need(header + length);
    const start = this.pos + header;
    this.pos = start + length;
    return this.buf.slice(start, start + length); // a copy: the frame's buffer can go
  }

  /** Any integer, as a bigint (exact for every msgpack integer). */
  private readInt(): bigint {
    const first = this.buf[this.pos]!;
    const at = this.pos;
    const size = this.scalarSize(first);
    this.need(size);
    this.pos += size;
    if (first <= 0x7f) return BigInt(first);
    if (first >= 0xe0) return BigInt(first - 0x100);
    switch (first) {
      case 0xcc: return BigInt(this.view.getUint8(at + 1));
      case 0xcd: return BigInt(this.view.getUint16(at + 1));
      case 0xce: return BigInt(this.view.getUint32(at + 1));
      case 0xcf: return this.view.getBigUint64(at + 1);
      case 0xd0: return BigInt(this.view.getInt8(at + 1));
      case 0xd1: return BigInt(this.view.getInt16(at + 1));
      case 0xd2: return BigInt(this.view.getInt32(at + 1));
      default: return this.view.getBigInt64(at + 1);
    }
  }

  /** A cursor, seq, id or count: a non-negative int64 (true is not an int here). This SDK
   * also refuses values above 2^53 - 1, which a JavaScript number cannot hold exactly. */
  uint(): number {
    this.expect("int");
    const value = this.readInt();
    if (value < 0n) throw new FieldError(`must be >= 0, got ${value}`);
    if (value > INT64_MAX) throw new FieldError(`must fit in a signed 64-bit integer, got ${value}`);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new FieldError(`must be at most 2^53 - 1 for this client, got ${value}`);
    return Number(value);
  }

  optionalUint(): number | null {
    if (this.kind() === "nil") {
      this.pos += 1;
      return null;
    }
    return this.uint();
  }

  optionalString(maxChars?: number): string | null {
    if (this.kind() === "nil") {
      this.pos += 1;
      return null;
    }
    return this.string(maxChars);
  }

  boolean(): boolean {
    this.expect("bool");
    return this.buf[this.pos++] === 0xc3;
  }

  /** A free-form value (an entity rejection's details), bounded in depth. */
  anyValue(maxDepth: number, depth = 0): unknown {
    const kind = this.kind();
    switch (kind) {
      case "nil": this.pos += 1; return null;
      case "bool": return this.boolean();
      case "int": {
        const value = this.readInt();
        const small = value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER);
        return small ? Number(value) : value;
      }
      case "float": {
        const at = this.pos;
        this.need(this.buf[at] === 0xca ? 5 : 9);
        this.pos += this.buf[at] === 0xca ? 5 : 9;
        return this.buf[at] === 0xca ? this.view.getFloat32(at + 1) : this.view.getFloat64(at + 1);
      }
      case "str": return this.readStr();
      case "bytes": return this.readBin();
    }
    if (depth >= maxDepth) throw new FieldError(`nested more than ${maxDepth} levels deep`);
    if (kind === "array") {
      const items: unknown[] = [];
      const count = this.open("array");
      for (let index = 0; index < count; index++) {
        try {
          items.push(this.anyValue(maxDepth, depth + 1));
        } catch (error) {
          throw error instanceof FieldError ? error.at(`[${index}]`) : error;
        }
      }
      return items;
    }
    const mapping: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
    const count = this.open("map");
    for (let i = 0; i < count; i++) {
      const key = this.key();
      if (Object.hasOwn(mapping, key)) throw new FieldError(`key '${key}' appears twice`);
      try {
        mapping[key] = this.anyValue(maxDepth, depth + 1);
      } catch (error) {
        throw error instanceof FieldError ? error.at(`.${key}`) : error;
      }
    }
    return { ...mapping };
  }
}
