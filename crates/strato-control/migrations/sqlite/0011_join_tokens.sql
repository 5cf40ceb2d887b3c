-- Join tokens are single use and expire: when a node's token stops being
-- accepted (NULL: never, for nodes made before this migration) and when its
-- agent used it (NULL: not yet). After that first enrolment the agent
-- proves who it is with its client certificate.
-- join_key is the SHA-256 of the public key the first enrolment's CSR
-- named: the same token with the same key (an agent whose first answer was
-- lost) may enrol again until the token expires, and no one else.
ALTER TABLE nodes ADD COLUMN join_expires_at INTEGER;
ALTER TABLE nodes ADD COLUMN join_used_at INTEGER;
ALTER TABLE nodes ADD COLUMN join_key TEXT;
-- Nodes enrolled before this migration used their token already.
UPDATE nodes SET join_used_at = state_since WHERE session_token_hash IS NOT NULL;
