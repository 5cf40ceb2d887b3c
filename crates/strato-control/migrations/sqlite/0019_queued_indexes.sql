-- A reconcile pass reads a cluster's oldest queued jobs and gives the
-- newly queued ones the cluster's queued reason (those whose reason
-- differs found in the index itself): both served by indexes of the
-- queued jobs alone, so neither grows with the queue (SQLite's
-- indexes end with the rowid, the order of submission among jobs queued
-- in one millisecond).
CREATE INDEX jobs_queued_by_age ON jobs (cluster, created_at) WHERE state = 'queued';
CREATE INDEX jobs_queued_by_change ON jobs (cluster, updated_at, reason) WHERE state = 'queued';
