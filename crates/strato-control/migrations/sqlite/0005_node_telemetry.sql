-- What agents report about their nodes: where to scrape them, their GPUs,
-- and the utilisation from the last heartbeat.
ALTER TABLE nodes ADD COLUMN metrics_url TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN cpu_percent REAL NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN memory_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN memory_total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN gpu_percent REAL NOT NULL DEFAULT 0;
