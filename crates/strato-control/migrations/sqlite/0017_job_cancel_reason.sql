-- Why a cancel was asked for: empty for a user's cancel ("canceled by
-- user"), else the reason itself (a job past its limits.timeout).
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';
