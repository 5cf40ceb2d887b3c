-- Named blob containers jobs read from and write to.
CREATE TABLE datastores (
    name        TEXT PRIMARY KEY,
    account_url TEXT NOT NULL,
    container   TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
