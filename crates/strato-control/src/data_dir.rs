//! The data directory: what only its owner may read, and the control
//! plane's id kept there.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;

/// The Owner's client configuration, written at first start.
pub fn admin_conf(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("admin.conf")
}

/// Writes `bytes` to a new file at `path` that only its owner can read
/// (0600 from the moment it exists), and syncs it. Fails if `path` exists.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The data directory holds secrets' hashes, the signing key and every
/// job's environment: only its owner may enter it (0700), and the database
/// files are the owner's alone (0600; a new database is made 0600 before
/// SQLite opens it, and SQLite gives its `-wal` and `-shm` files the
/// database's mode). Where the mode cannot be changed (a volume the process
/// does not own), it says so and goes on. With `sqlite` false (the state
/// is in PostgreSQL) no database file is made.
pub fn keep_private(data_dir: &std::path::Path, sqlite: bool) {
    use std::os::unix::fs::PermissionsExt as _;
    let set = |path: &std::path::Path, mode: u32| {
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), error = %e, "cannot make it private");
        }
    };
    set(data_dir, 0o700);
    let db = data_dir.join(crate::store::DB_FILE);
    if sqlite
        && !db.exists()
        && let Err(e) = write_new_private(&db, b"")
    {
        tracing::warn!(path = %db.display(), error = %e, "cannot make the database file");
    }
    for file in [crate::store::DB_FILE, "strato.db-wal", "strato.db-shm"] {
        let path = data_dir.join(file);
        if path.exists() {
            set(&path, 0o600);
        }
    }
}

/// This control plane's id (`DATA_DIR/control-plane-id`, made on first
/// start): what its provider makes carries it, so that it cleans up only
/// what is its own when other control planes share the machine.
pub fn control_plane_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("control-plane-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    write_private(&path, id.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Writes `bytes` to `path` (0600) whole or not at all: into a new file
/// beside it, then renamed over it, so a crash never leaves half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    strato_runtime::write_private(path, bytes)
}
