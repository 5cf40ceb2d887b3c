-- Join tokens of attached clusters: a machine that presents one joins its
-- cluster as a new node, before it expires and while it has uses left.
-- Only the token's SHA-256 is kept.
CREATE TABLE cluster_join_tokens (
    token_hash TEXT PRIMARY KEY,
    cluster    TEXT NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    uses_left  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
) STRICT;

-- The cluster join token (SHA-256) a machine joined with: the same agent
-- (join_key) presenting it again gets its node back, not a second one.
ALTER TABLE nodes ADD COLUMN join_source TEXT;
CREATE INDEX nodes_by_join_source ON nodes (join_source, join_key);
