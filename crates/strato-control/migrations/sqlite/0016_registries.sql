-- Registries nodes pull job images from: a server (HOST[:PORT], lowercase)
-- taken by one registry, and how nodes log in: basic credentials whose
-- password is stored only sealed (AES-256-GCM under DATA_DIR/secrets.key),
-- or the job's cluster identity ("default" or a resource id) through the
-- registry's token exchange.
CREATE TABLE registries (
    name TEXT PRIMARY KEY,
    server TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL,
    password_sealed TEXT NOT NULL,
    identity TEXT NOT NULL DEFAULT '',
    -- The clusters whose jobs may pull with it (a JSON array; ["*"]: all).
    clusters TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL
);
