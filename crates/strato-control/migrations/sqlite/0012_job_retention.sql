-- Ended jobs by when they ended (a final job's updated_at never changes),
-- for deleting those past the retention period.
CREATE INDEX jobs_ended ON jobs (updated_at) WHERE state IN ('completed', 'failed', 'canceled');
