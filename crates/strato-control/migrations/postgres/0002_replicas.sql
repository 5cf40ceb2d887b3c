-- Replicas: the one leader lease (held by the replica that runs the
-- reconcile loop; its epoch fences that replica's writes), which replica
-- holds each node's agent session, and the notifications that wake the
-- other replicas when jobs, nodes or output change.
CREATE TABLE leader_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    -- Milliseconds since the epoch, by the database's clock.
    expires_at BIGINT NOT NULL
);
INSERT INTO leader_lease (id, holder, epoch, expires_at) VALUES (1, '', 0, 0);
ALTER TABLE nodes ADD COLUMN session_replica TEXT;

-- One notification per transaction and payload (PostgreSQL folds the
-- same payload within a transaction), sent at commit. The payload starts
-- with the replica that wrote (the session setting `strato.replica`) and a
-- '|': a replica passes over its own.
CREATE FUNCTION strato_notify_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('strato',
        coalesce(current_setting('strato.replica', true), '') || '|changed');
    RETURN NULL;
END $$;
-- Rows that come or go, and changes of what a reconcile pass, a courier
-- or a waiter acts on; not heartbeats, utilisation or output counters
-- (written all the time, acted on by no one else).
CREATE TRIGGER jobs_added_or_deleted AFTER INSERT OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION strato_notify_changed();
CREATE TRIGGER jobs_changed AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
       OR OLD.attempt IS DISTINCT FROM NEW.attempt
       OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested
       OR OLD.reason IS DISTINCT FROM NEW.reason)
    EXECUTE FUNCTION strato_notify_changed();
CREATE TRIGGER nodes_added_or_deleted AFTER INSERT OR DELETE ON nodes
    FOR EACH STATEMENT EXECUTE FUNCTION strato_notify_changed();
CREATE TRIGGER nodes_changed AFTER UPDATE ON nodes FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
       OR OLD.run_id IS DISTINCT FROM NEW.run_id
       OR OLD.reason IS DISTINCT FROM NEW.reason
       OR OLD.evict_at IS DISTINCT FROM NEW.evict_at
       OR OLD.session_token_hash IS DISTINCT FROM NEW.session_token_hash
       OR OLD.session_replica IS DISTINCT FROM NEW.session_replica)
    EXECUTE FUNCTION strato_notify_changed();
CREATE TRIGGER ranks_added_or_deleted AFTER INSERT OR DELETE ON job_ranks
    FOR EACH STATEMENT EXECUTE FUNCTION strato_notify_changed();
CREATE TRIGGER ranks_changed AFTER UPDATE ON job_ranks FOR EACH ROW
    WHEN (OLD.started IS DISTINCT FROM NEW.started
       OR OLD.ended_at IS DISTINCT FROM NEW.ended_at
       OR OLD.exit_code IS DISTINCT FROM NEW.exit_code)
    EXECUTE FUNCTION strato_notify_changed();

CREATE FUNCTION strato_notify_output() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('strato',
        coalesce(current_setting('strato.replica', true), '') || '|output:' || NEW.job_id);
    RETURN NULL;
END $$;
CREATE TRIGGER job_logs_output AFTER INSERT ON job_logs
    FOR EACH ROW EXECUTE FUNCTION strato_notify_output();
