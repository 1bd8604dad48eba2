/**
 * Every error the SDK throws or reports derives from `FieldsyncError`. Local mistakes (an
 * edit that does not fit the schema, an unknown entity) throw at once and store nothing.
 * What the server says about the connection is reported in `status.lastError` and thrown by
 * the call that waits for it (`openProject`, `waitSynced`).
 */
import type { SchemaViolation } from "./schema.js";

export class FieldsyncError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A local edit does not fit the entity's schema; nothing was stored. */
export class ValidationError extends FieldsyncError {
  constructor(message: string, readonly violations: readonly SchemaViolation[] = []) {
    super(message);
  }
}

/** No entity with this type and id in the local copy. */
export class EntityNotFound extends FieldsyncError {}

/** `resolveConflict` cannot settle this conflict by choosing a value. */
export class ConflictNotResolvable extends FieldsyncError {}

/** The local storage cannot be opened or written. */
export class StorageError extends FieldsyncError {}

/** The client was closed. */
export class ClientClosed extends FieldsyncError {}

/** Something the server reported, with its protocol error code. */
export class ServerError extends FieldsyncError {
  constructor(readonly code: string, readonly detail: string) {
    super(`${code}: ${detail}`);
  }
}

/** The token was refused (`invalid_token`, `token_expired`): sync stops until a new token. */
export class AuthError extends ServerError {}

/** The server speaks no protocol version this SDK speaks: update the SDK. */
export class IncompatibleServer extends ServerError {}

/** No such project, or the user is not (or no longer) a member. */
export class ProjectUnavailable extends ServerError {
  constructor(readonly projectId: string, code: string, detail: string) {
    super(code, detail);
  }
}

/** The user was removed from the project while syncing it; its outbox is rejected. */
export class MembershipRemoved extends ProjectUnavailable {}

/** An attachment's file cannot be downloaded: `code` is the server's (`not_ready`,
 * `no_such_thumbnail`, `project_unavailable`). */
export class AttachmentUnavailable extends ServerError {}

/** The server could not be reached; sync retries by itself. */
export class Offline extends FieldsyncError {}

/** The server's frames broke the protocol (a hostile or broken server); sync reconnects. */
export class ProtocolError extends FieldsyncError {
  constructor(readonly code: string, message: string) {
    super(`${code}: ${message}`);
  }
}
