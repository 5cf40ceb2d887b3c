-- Multi-node jobs: every attempt holds one or more nodes, one per rank.
-- job_attempts.node_id stays rank 0's node.
CREATE TABLE job_ranks (
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt   INTEGER NOT NULL,
    rank      INTEGER NOT NULL,
    node_id   TEXT NOT NULL,
    started   INTEGER NOT NULL DEFAULT 0,  -- its container runs (or ran)
    ended_at  INTEGER,                      -- its container stopped (ms)
    exit_code INTEGER,
    reason    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, attempt, rank)
) STRICT;

CREATE INDEX job_ranks_open_by_node ON job_ranks (node_id) WHERE ended_at IS NULL;

INSERT INTO job_ranks (job_id, attempt, rank, node_id, started, ended_at, exit_code, reason)
SELECT job_id, attempt, 0, node_id, 1, ended_at, exit_code, reason FROM job_attempts;

-- Log lines carry the rank that wrote them (seq counts per rank), and a
-- position in arrival order, the cursor of a follow.
CREATE TABLE job_logs_by_rank (
    pos     INTEGER PRIMARY KEY,
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    rank    INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    stream  INTEGER NOT NULL,               -- 1 stdout, 2 stderr
    line    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    UNIQUE (job_id, attempt, rank, seq)
) STRICT;

INSERT INTO job_logs_by_rank (job_id, attempt, rank, seq, stream, line, at)
SELECT job_id, attempt, 0, seq, stream, line, at FROM job_logs ORDER BY job_id, attempt, seq;

DROP TABLE job_logs;
ALTER TABLE job_logs_by_rank RENAME TO job_logs;
CREATE INDEX job_logs_by_job ON job_logs (job_id, pos);
