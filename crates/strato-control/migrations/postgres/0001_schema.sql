-- The PostgreSQL schema: the same tables, columns and indexes as SQLite's
-- migrations 0001 to 0017 end with (see migrations/sqlite for what each
-- column means), in PostgreSQL's types. Integers are BIGINT (the store
-- binds and reads 64-bit integers), flags 0/1, JSON documents TEXT.
-- A later change adds a migration here and one in migrations/sqlite.

-- Cluster names are unique regardless of case, as SQLite's COLLATE NOCASE
-- makes them; the columns that name a cluster compare the same way.
CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);

CREATE TABLE clusters (
    name             TEXT COLLATE nocase PRIMARY KEY,
    location         TEXT NOT NULL,
    spec             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    scale_changed_at BIGINT NOT NULL,
    allocation_state TEXT NOT NULL DEFAULT 'steady',
    allocation_since BIGINT NOT NULL DEFAULT 0,
    target_nodes     BIGINT NOT NULL DEFAULT 0,
    errors           TEXT NOT NULL DEFAULT '[]',
    identities       TEXT NOT NULL DEFAULT '[]'
);

CREATE INDEX clusters_by_location ON clusters (location);

CREATE TABLE nodes (
    node_id            TEXT PRIMARY KEY,
    cluster            TEXT COLLATE nocase NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    state              TEXT NOT NULL,
    private_ip         TEXT NOT NULL DEFAULT '',
    port               BIGINT NOT NULL DEFAULT 0,
    run_id             TEXT,
    reason             TEXT NOT NULL DEFAULT '',
    state_since        BIGINT NOT NULL,
    created_at         BIGINT NOT NULL DEFAULT 0,
    idle_since         BIGINT NOT NULL DEFAULT 0,
    last_heartbeat     BIGINT,
    join_token_hash    TEXT,
    session_token_hash TEXT,
    hostname           TEXT NOT NULL DEFAULT '',
    pid                BIGINT,
    metrics_url        TEXT NOT NULL DEFAULT '',
    gpus               BIGINT NOT NULL DEFAULT 0,
    cpu_percent        DOUBLE PRECISION NOT NULL DEFAULT 0,
    memory_used        BIGINT NOT NULL DEFAULT 0,
    memory_total       BIGINT NOT NULL DEFAULT 0,
    gpu_percent        DOUBLE PRECISION NOT NULL DEFAULT 0,
    evict_at           BIGINT,
    gpu_info           TEXT NOT NULL DEFAULT '[]',
    join_expires_at    BIGINT,
    join_used_at       BIGINT,
    join_key           TEXT,
    join_source        TEXT,
    ssh_host_key       TEXT NOT NULL DEFAULT ''
);

CREATE INDEX nodes_by_cluster ON nodes (cluster);
CREATE UNIQUE INDEX nodes_by_join_token ON nodes (join_token_hash);
CREATE UNIQUE INDEX nodes_by_session_token ON nodes (session_token_hash);
CREATE INDEX nodes_by_join_source ON nodes (join_source, join_key);

CREATE TABLE jobs (
    -- The order of submission, as SQLite's implicit rowid gives it.
    rowid            BIGSERIAL NOT NULL UNIQUE,
    id               TEXT PRIMARY KEY,
    cluster          TEXT COLLATE nocase NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    spec             TEXT NOT NULL,
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    attempt          BIGINT NOT NULL,
    failures         BIGINT NOT NULL DEFAULT 0,
    node_id          TEXT,
    exit_code        BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    preemptions      BIGINT NOT NULL DEFAULT 0,
    submitted_by     TEXT NOT NULL DEFAULT '',
    cancel_reason    TEXT NOT NULL DEFAULT ''
);

CREATE INDEX jobs_by_cluster_state ON jobs (cluster, state);
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_ended ON jobs (updated_at) WHERE state IN ('completed', 'failed', 'canceled');

CREATE TABLE job_transitions (
    rowid   BIGSERIAL PRIMARY KEY,
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at      BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    state   TEXT NOT NULL,
    reason  TEXT NOT NULL
);

CREATE INDEX job_transitions_by_job ON job_transitions (job_id);

CREATE TABLE job_attempts (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt    BIGINT NOT NULL,
    node_id    TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at   BIGINT,
    reason     TEXT NOT NULL DEFAULT '',
    exit_code  BIGINT,
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE job_ranks (
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      BIGINT NOT NULL,
    rank         BIGINT NOT NULL,
    node_id      TEXT NOT NULL,
    started      BIGINT NOT NULL DEFAULT 0,
    ended_at     BIGINT,
    exit_code    BIGINT,
    reason       TEXT NOT NULL DEFAULT '',
    stored_bytes BIGINT NOT NULL DEFAULT 0,
    truncated    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, attempt, rank)
);

CREATE INDEX job_ranks_open_by_node ON job_ranks (node_id) WHERE ended_at IS NULL;

-- pos is the cursor of a follow: writes are serialized (the store's
-- advisory lock), so positions are committed in the order they are taken.
CREATE TABLE job_logs (
    pos     BIGSERIAL PRIMARY KEY,
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    rank    BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    stream  BIGINT NOT NULL,
    line    TEXT NOT NULL,
    at      BIGINT NOT NULL,
    UNIQUE (job_id, attempt, rank, seq)
);

CREATE INDEX job_logs_by_job ON job_logs (job_id, pos);

CREATE TABLE datastores (
    name        TEXT PRIMARY KEY,
    account_url TEXT NOT NULL,
    container   TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    name        TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    created_by  TEXT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE role_assignments (
    principal  TEXT NOT NULL,
    role       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (principal, role, scope)
);

CREATE TABLE cluster_join_tokens (
    token_hash TEXT PRIMARY KEY,
    cluster    TEXT COLLATE nocase NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    uses_left  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE registries (
    name            TEXT PRIMARY KEY,
    server          TEXT NOT NULL UNIQUE,
    username        TEXT NOT NULL,
    password_sealed TEXT NOT NULL,
    identity        TEXT NOT NULL DEFAULT '',
    clusters        TEXT NOT NULL DEFAULT '[]',
    created_at      BIGINT NOT NULL
);
