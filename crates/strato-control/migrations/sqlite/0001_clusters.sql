-- Clusters and their nodes. A cluster's spec is stored as JSON (the
-- strato-core ClusterSpec); the columns beside it are what queries filter on.
CREATE TABLE clusters (
    name        TEXT PRIMARY KEY COLLATE NOCASE,
    location    TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  INTEGER NOT NULL, -- ms since the Unix epoch
    updated_at  INTEGER NOT NULL,
    -- When min_nodes or max_nodes last changed (or the cluster was created):
    -- the start of the current allocation state.
    scale_changed_at INTEGER NOT NULL
) STRICT;

CREATE INDEX clusters_by_location ON clusters (location);

CREATE TABLE nodes (
    node_id     TEXT PRIMARY KEY,
    cluster     TEXT NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    state       TEXT NOT NULL,
    private_ip  TEXT NOT NULL DEFAULT '',
    port        INTEGER NOT NULL DEFAULT 0,
    run_id      TEXT,
    reason      TEXT NOT NULL DEFAULT '',
    state_since INTEGER NOT NULL
) STRICT;

CREATE INDEX nodes_by_cluster ON nodes (cluster);
