-- ListJobs pages newest first by (created_at, rowid): an index serves
-- each page without sorting the whole table.
CREATE INDEX jobs_by_created ON jobs (created_at);
