-- Conflicts reach clients with the changes that caused them. Every transaction that writes
-- or deletes rm_conflicts rows also records, here, which conflict ids it touched and the
-- project seq its changes end at. A reader that has relayed the log up to seq N reads the
-- entries with seq <= N and sends the rows' current state (or "removed" when the row is
-- gone), so conflict updates follow the log by cursor exactly like changes do, in every
-- server process. rm_conflicts itself stays a pure read model that a rebuild reproduces.
CREATE TABLE conflict_feed (
    project_id   uuid NOT NULL,
    seq          bigint NOT NULL,
    conflict_id  text NOT NULL,
    PRIMARY KEY (project_id, seq, conflict_id)
);

-- The rules look up the conflicts naming the entities a push touched.
CREATE INDEX rm_conflicts_by_entity ON rm_conflicts USING gin (entity_ids);
