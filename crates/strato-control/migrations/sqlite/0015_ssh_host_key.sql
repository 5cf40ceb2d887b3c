-- The SSH host key (an OpenSSH public key line) a node's agent reported
-- over its authenticated session, when its cluster serves SSH: clients pin
-- it instead of trusting the first connection.
ALTER TABLE nodes ADD COLUMN ssh_host_key TEXT NOT NULL DEFAULT '';
