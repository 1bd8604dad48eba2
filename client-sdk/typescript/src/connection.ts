/**
 * The client's end of a sync connection as a state machine without I/O (the port of the
 * server's `sync/connection.py` `ClientConnection`). Frames go in through `receiveFrame`;
 * valid messages come out of `eventsReceived()`, frames to write out of `dataToSend()`.
 * When `closeRequested` is set, the shell writes what is left, closes the WebSocket with that
 * code and calls `connectionClosed()`. Whatever the server sends becomes state:
 * `receiveFrame` never throws.
 *
 *   AWAITING_HELLO --hello()--> AUTHENTICATING --welcome--> OPEN --fatal/close--> CLOSING --> CLOSED
 */
import { decodeServer, encode, ProtocolViolation } from "./codec/codec.js";
import { CLOSE_CODES, DEFAULT_LIMITS, PROTOCOL_VERSIONS, type ClientMessage, type Limits, type ProjectCursor, type ServerMessage, type Welcome } from "./generated/protocol.js";

export type ConnectionState = "awaiting_hello" | "authenticating" | "open" | "closing" | "closed";

export class InvalidStateError extends Error {}

export class ClientConnection {
  state: ConnectionState = "awaiting_hello";
  closeRequested: [number, string] | null = null;
  welcome: Welcome | null = null;
  failure: ProtocolViolation | null = null;
  private outgoing: Uint8Array[] = [];
  private events: ServerMessage[] = [];
  private offered: readonly number[] = [];

  constructor(readonly limits: Limits = DEFAULT_LIMITS) {}

  hello(token: string, clientId: string, projects: readonly ProjectCursor[], outboxAgeMs: number | null, versions: readonly number[] = PROTOCOL_VERSIONS, clientVersion: string | null = null): void {
    if (this.state !== "awaiting_hello") throw new InvalidStateError(`hello() needs awaiting_hello, not ${this.state}`);
    this.offered = [...versions];
    this.outgoing.push(encode({ t: "hello", versions: this.offered, token, client_id: clientId, projects, outbox_age_ms: outboxAgeMs, client_version: clientVersion }));
    this.state = "authenticating";
  }

  receiveFrame(frame: Uint8Array | string): void {
    if (this.state === "closing" || this.state === "closed") return;
    let message: ServerMessage;
    try {
      message = decodeServer(frame, this.limits);
    } catch (error) {
      this.fail(error instanceof ProtocolViolation ? error : new ProtocolViolation("malformed_frame", String(error)));
      return;
    }
    if (message.t === "error") {
      this.events.push(message);
      if (message.fatal) this.requestClose(CLOSE_CODES.NORMAL, message.code);
    } else if (this.state === "open" && message.t !== "welcome") {
      this.events.push(message);
    } else if (this.state === "authenticating" && message.t === "welcome") {
      if (!this.offered.includes(message.version)) {
        this.fail(new ProtocolViolation("unsupported_version", `welcome chose version ${message.version}; the hello offered ${this.offered.join(", ")}`));
        return;
      }
      this.welcome = message;
      this.state = "open";
      this.events.push(message);
    } else {
      const code = this.state === "open" ? "already_handshaken" : "handshake_required";
      this.fail(new ProtocolViolation(code, `${message.t} is out of place in ${this.state}`));
    }
  }

  send(message: Exclude<ClientMessage, { t: "hello" }>): void {
    if (this.state === "closing" || this.state === "closed") return;
    if (this.state !== "open") throw new InvalidStateError(`cannot send ${message.t} in ${this.state}`);
    this.outgoing.push(encode(message));
  }

  dataToSend(): Uint8Array[] {
    const frames = this.outgoing;
    this.outgoing = [];
    return frames;
  }

  eventsReceived(): ServerMessage[] {
    const events = this.events;
    this.events = [];
    return events;
  }

  close(code: number = CLOSE_CODES.NORMAL, reason = ""): void {
    if (this.state !== "closing" && this.state !== "closed") this.requestClose(code, reason);
  }

  connectionClosed(): void {
    this.state = "closed";
    this.outgoing = [];
  }

  private fail(violation: ProtocolViolation): void {
    this.failure = violation;
    const code = violation.code === "frame_too_large" ? CLOSE_CODES.MESSAGE_TOO_BIG : CLOSE_CODES.PROTOCOL_ERROR;
    this.requestClose(code, violation.code);
  }

  private requestClose(code: number, reason: string): void {
    this.state = "closing";
    // A WebSocket close reason holds at most 123 bytes of UTF-8.
    const bytes = new TextEncoder().encode(reason).slice(0, 123);
    this.closeRequested = [code, new TextDecoder().decode(bytes).replace(/\uFFFD$/u, "")];
  }
}
