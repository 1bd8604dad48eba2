/**
 * @fieldsync/client: an offline-first client for fieldsync servers, for browsers, tablet
 * WebViews and Node 20. See README.md.
 */
export { FieldsyncClient, TimeoutError, type ClientOptions } from "./client.js";
export { Project, type RejectedChange } from "./project.js";
export type { AttachmentStatus, AttachmentStatusName, AttachmentVariant, LocalCopy } from "./attachments.js";
export { Conflict, type ConflictChange, type ConflictUpdate } from "./conflicts.js";
export type { SyncStatus } from "./status.js";
export type { ConnectionStatus, RemoteChanges, SocketLike, TokenSource, WebSocketFactory } from "./sync-loop.js";
export { CLIENT_VERSION, SDK_VERSION } from "./version.js";
export {
  AttachmentUnavailable,
  AuthError,
  ClientClosed,
  ConflictNotResolvable,
  EntityNotFound,
  FieldsyncError,
  IncompatibleServer,
  MembershipRemoved,
  Offline,
  ProjectUnavailable,
  ProtocolError,
  ServerError,
  StorageError,
  ValidationError,
} from "./errors.js";
export { inspect, ENTITY_TYPES, type SchemaViolation } from "./schema.js";
export { MemoryStorage } from "./store/memory.js";
export type { EntityMeta, EntityRow, OutboxRow, ProjectRow, Storage, UploadRow, WriteOp } from "./store/types.js";
export type * from "./generated/entities.js";
export { decodeClient, decodeServer, encode, ProtocolViolation } from "./codec/codec.js";
export { PROTOCOL_VERSIONS, DEFAULT_LIMITS, type Limits } from "./generated/protocol.js";
