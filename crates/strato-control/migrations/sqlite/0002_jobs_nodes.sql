-- Nodes come from providers and enrol; jobs run on them.

-- The allocation state the reconcile loop last recorded, with its cause.
ALTER TABLE clusters ADD COLUMN allocation_state TEXT NOT NULL DEFAULT 'steady';
ALTER TABLE clusters ADD COLUMN allocation_since INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN target_nodes INTEGER NOT NULL DEFAULT 0;
-- JSON array of {code, message, since}: why the cluster is not at its target.
ALTER TABLE clusters ADD COLUMN errors TEXT NOT NULL DEFAULT '[]';

ALTER TABLE nodes ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN idle_since INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN last_heartbeat INTEGER;
-- SHA-256 of the join token the provider handed the node's agent.
ALTER TABLE nodes ADD COLUMN join_token_hash TEXT;
-- SHA-256 of the current session token; NULL until the agent enrols.
ALTER TABLE nodes ADD COLUMN session_token_hash TEXT;
ALTER TABLE nodes ADD COLUMN hostname TEXT NOT NULL DEFAULT '';
-- The local provider's agent process, so a restarted control plane can find it.
ALTER TABLE nodes ADD COLUMN pid INTEGER;

CREATE UNIQUE INDEX nodes_by_join_token ON nodes (join_token_hash);
CREATE UNIQUE INDEX nodes_by_session_token ON nodes (session_token_hash);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    cluster          TEXT NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    spec             TEXT NOT NULL,          -- JSON of strato-core JobSpec
    state            TEXT NOT NULL,
    reason           TEXT NOT NULL DEFAULT '',
    attempt          INTEGER NOT NULL,       -- current attempt, from 1
    failures         INTEGER NOT NULL DEFAULT 0,
    node_id          TEXT,
    exit_code        INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) STRICT;

CREATE INDEX jobs_by_cluster_state ON jobs (cluster, state);

CREATE TABLE job_transitions (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state   TEXT NOT NULL,
    reason  TEXT NOT NULL
) STRICT;

CREATE INDEX job_transitions_by_job ON job_transitions (job_id);

CREATE TABLE job_attempts (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL,
    node_id    TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    reason     TEXT NOT NULL DEFAULT '',
    exit_code  INTEGER,
    PRIMARY KEY (job_id, attempt)
) STRICT;

-- Each (job, attempt, seq) is stored once: agents may resend lines.
CREATE TABLE job_logs (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    stream  INTEGER NOT NULL,                -- 1 stdout, 2 stderr
    line    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt, seq)
) STRICT, WITHOUT ROWID;
