-- The sync health of each member's clients, per project: written by the server processes
-- as clients say hello, while they stay connected and when they leave (never by the log:
-- it is not a read model, and a rebuild leaves it alone). One row per (project, user,
-- client id), replaced by the session that said hello last: `hello_at` is when its
-- session began, and a write of an older session (a process late in reporting a
-- disconnect) never overwrites a newer one's. `connected` is true while that session is
-- open; a process that dies cannot clear it, so readers also require `seen_at` (refreshed
-- while the session stays open) to be recent.
CREATE TABLE member_sync_health (
    project_id      uuid NOT NULL REFERENCES projects (project_id),
    user_id         uuid NOT NULL REFERENCES users (user_id),
    client_id       text NOT NULL,
    client_version  text,
    outbox_age_ms   bigint CHECK (outbox_age_ms >= 0),
    hello_at        timestamptz NOT NULL,
    seen_at         timestamptz NOT NULL,
    connected       boolean NOT NULL,
    PRIMARY KEY (project_id, user_id, client_id)
);
