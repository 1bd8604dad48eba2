-- Server-managed rows: accounts, users, projects and who may enter a project.
CREATE TABLE accounts (
    account_id  uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    user_id      uuid PRIMARY KEY,
    account_id   uuid REFERENCES accounts (account_id),
    display_name text NOT NULL,
    email        text UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    project_id  uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (account_id),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_members (
    project_id  uuid NOT NULL REFERENCES projects (project_id),
    user_id     uuid NOT NULL REFERENCES users (user_id),
    level       text NOT NULL CHECK (level IN ('lead', 'specialist', 'viewer')),
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id)
);

-- The head of each project's change log. Appenders lock this row (SELECT ... FOR UPDATE)
-- for the whole appending transaction: seqs are handed out under that lock and the row is
-- released only at commit, so a transaction holding seq N+1 can only commit after the one
-- holding seq N did. A reader that has seen seq N therefore never finds a smaller seq later.
CREATE TABLE log_heads (
    project_id  uuid PRIMARY KEY REFERENCES projects (project_id),
    head_seq    bigint NOT NULL DEFAULT 0 CHECK (head_seq >= 0)
);

-- The change log: every accepted Automerge change, once, in per-project seq order.
-- Hash-partitioned by project so that the log can later be spread by project.
CREATE TABLE changes (
    project_id   uuid NOT NULL,
    seq          bigint NOT NULL CHECK (seq > 0),
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    hash         bytea NOT NULL CHECK (length(hash) = 32),
    actor        bytea NOT NULL,
    actor_seq    bigint NOT NULL,
    change       bytea NOT NULL,
    sender       text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, seq),
    UNIQUE (project_id, hash, entity_id)
) PARTITION BY HASH (project_id);

CREATE TABLE changes_p0 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 0);
CREATE TABLE changes_p1 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 1);
CREATE TABLE changes_p2 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 2);
CREATE TABLE changes_p3 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 3);
CREATE TABLE changes_p4 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 4);
CREATE TABLE changes_p5 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 5);
CREATE TABLE changes_p6 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 6);
CREATE TABLE changes_p7 PARTITION OF changes FOR VALUES WITH (MODULUS 8, REMAINDER 7);

CREATE INDEX changes_by_entity ON changes (project_id, entity_id, seq);

-- The current document of each entity: `saved` (Automerge save() output) followed by
-- `tail` (change chunks appended since) loads as the document; the pair always equals
-- replaying the entity's changes from the log. `version` is the seq of the entity's latest
-- change: an in-process copy with the same version is the same document.
CREATE TABLE documents (
    project_id   uuid NOT NULL REFERENCES projects (project_id),
    entity_id    text NOT NULL,
    entity_type  text NOT NULL,
    heads        bytea[] NOT NULL,
    saved        bytea NOT NULL,
    tail         bytea NOT NULL,
    tail_changes integer NOT NULL,
    change_count integer NOT NULL,
    version      bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);

-- Entity ids are chosen by clients and must name one entity in one project: this index is
-- what lets a push to another project's entity be refused.
CREATE UNIQUE INDEX documents_entity_id ON documents (entity_id);

-- Read models: projections of the log, written only by the append path and by rebuild.
CREATE TABLE rm_project_settings (
    project_id  uuid NOT NULL,
    entity_id   text NOT NULL,
    name        text NOT NULL,
    timezone    text,
    deleted     boolean NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);

CREATE TABLE rm_plans (
    project_id  uuid NOT NULL,
    entity_id   text NOT NULL,
    name        text NOT NULL,
    starts_at   timestamptz,
    ends_at     timestamptz,
    deleted     boolean NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);

CREATE TABLE rm_activities (
    project_id   uuid NOT NULL,
    entity_id    text NOT NULL,
    plan_id      text NOT NULL,
    title        text NOT NULL,
    location_id  text,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    status       text NOT NULL,
    tasks_total  integer NOT NULL,
    tasks_done   integer NOT NULL,
    deleted      boolean NOT NULL,
    last_seq     bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);
CREATE INDEX rm_activities_by_location_time ON rm_activities (project_id, location_id, starts_at);
CREATE INDEX rm_activities_by_time ON rm_activities (project_id, starts_at, ends_at);

CREATE TABLE rm_locations (
    project_id  uuid NOT NULL,
    entity_id   text NOT NULL,
    name        text NOT NULL,
    address     text,
    latitude    double precision,
    longitude   double precision,
    deleted     boolean NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);

CREATE TABLE rm_roles (
    project_id  uuid NOT NULL,
    entity_id   text NOT NULL,
    name        text NOT NULL,
    skills      text[] NOT NULL,
    deleted     boolean NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);

CREATE TABLE rm_summonings (
    project_id   uuid NOT NULL,
    entity_id    text NOT NULL,
    activity_id  text NOT NULL,
    role_id      text,
    user_id      text,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    status       text NOT NULL,
    deleted      boolean NOT NULL,
    last_seq     bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);
CREATE INDEX rm_summonings_by_user_time ON rm_summonings (project_id, user_id, starts_at);
CREATE INDEX rm_summonings_by_activity ON rm_summonings (project_id, activity_id);

CREATE TABLE rm_memberships (
    project_id    uuid NOT NULL,
    entity_id     text NOT NULL,
    user_id       text NOT NULL,
    role_ids      text[] NOT NULL,
    display_name  text,
    deleted       boolean NOT NULL,
    last_seq      bigint NOT NULL,
    PRIMARY KEY (project_id, entity_id)
);

-- Conflicts found by merges (filled by the conflict rules); a projection like the others.
CREATE TABLE rm_conflicts (
    project_id    uuid NOT NULL,
    conflict_id   text NOT NULL,
    kind          text NOT NULL,
    entity_ids    text[] NOT NULL,
    fields        text[] NOT NULL,
    details       jsonb NOT NULL,
    status        text NOT NULL CHECK (status IN ('open', 'resolved')),
    opened_seq    bigint NOT NULL,
    resolved_seq  bigint,
    PRIMARY KEY (project_id, conflict_id)
);
CREATE INDEX rm_conflicts_open ON rm_conflicts (project_id, status);
