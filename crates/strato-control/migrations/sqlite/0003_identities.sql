-- A cluster's managed identities with their client and principal ids:
-- JSON array of strato-core Identity.
ALTER TABLE clusters ADD COLUMN identities TEXT NOT NULL DEFAULT '[]';
