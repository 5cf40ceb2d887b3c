-- What of an attempt's output on one node is kept: its bytes so far, and
-- whether the truncation marker is stored (then nothing more is).
ALTER TABLE job_ranks ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_ranks ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
