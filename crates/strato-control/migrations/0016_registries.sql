-- Registries nodes pull job images from: a server (HOST[:PORT], lowercase)
-- taken by one registry, and basic credentials whose password is stored
-- only sealed (AES-256-GCM under DATA_DIR/secrets.key).
CREATE TABLE registries (
    name TEXT PRIMARY KEY,
    server TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL,
    password_sealed TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
