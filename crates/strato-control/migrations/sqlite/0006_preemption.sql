-- Evictions of low-priority nodes: re-queues counted apart from failures,
-- and when a preempted node goes.
ALTER TABLE jobs ADD COLUMN preemptions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN evict_at INTEGER;
