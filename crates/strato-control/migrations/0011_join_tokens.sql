-- Join tokens are single use and expire: when a node's token stops being
-- accepted (NULL: never, for nodes made before this migration) and when its
-- agent used it (NULL: not yet). After that first enrolment the agent
-- proves who it is with its client certificate.
ALTER TABLE nodes ADD COLUMN join_expires_at INTEGER;
ALTER TABLE nodes ADD COLUMN join_used_at INTEGER;
