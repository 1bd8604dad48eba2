-- How many ops each entity's logged changes hold together. A change's columns are
-- run-length encoded, so its size in bytes says little about what it costs once applied;
-- the append path refuses a document growing past Limits.max_document_ops by this count.
-- Documents written before this migration start from 0; `fieldsync rebuild-read-models`
-- recounts them from the log.
ALTER TABLE documents ADD COLUMN op_count bigint NOT NULL DEFAULT 0 CHECK (op_count >= 0);
