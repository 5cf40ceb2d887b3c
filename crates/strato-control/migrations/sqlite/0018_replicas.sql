-- Replicas: the one leader lease (held by the replica that runs the
-- reconcile loop; its epoch fences that replica's writes), and which
-- replica holds each node's agent session.
CREATE TABLE leader_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    -- Milliseconds since the epoch, by the database's clock.
    expires_at INTEGER NOT NULL
);
INSERT INTO leader_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, 0);
ALTER TABLE nodes ADD COLUMN session_replica TEXT;
