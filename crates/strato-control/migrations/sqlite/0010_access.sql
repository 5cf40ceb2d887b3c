-- Who may call: API tokens (kept as SHA-256 hashes of their secrets, never
-- the secrets) and role assignments; and who submitted each job.
CREATE TABLE api_tokens (
    name        TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    created_by  TEXT NOT NULL,
    revoked_at  INTEGER
) STRICT;

CREATE TABLE role_assignments (
    principal  TEXT NOT NULL,
    role       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (principal, role, scope)
) STRICT;

ALTER TABLE jobs ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';
