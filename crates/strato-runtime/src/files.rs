//! Files only their owner may read: keys, certificates, client configs.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Writes `bytes` to `path`, private from the first byte: a missing parent
/// directory is made with mode 0700, the bytes go to a temporary file of
/// mode 0600 in the same directory, are flushed to disk, and the file is
/// renamed over `path`, so a crash leaves the old file or the new, never
/// half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left by a write of this process that died between write and rename.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the directory is.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;

    #[test]
    fn the_file_and_its_new_directory_are_private_and_replaced_whole() {
        let root = std::env::temp_dir().join(format!("strato-files-{}", std::process::id()));
        let path = root.join("credentials").join("node.key");
        super::write_private(&path, b"first").expect("write");
        super::write_private(&path, b"second").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.join("credentials")), 0o700);
        let left: Vec<_> = std::fs::read_dir(root.join("credentials"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}

/// Removes the tree at `dir` without ever entering another filesystem: a
/// directory mounted inside it (a job's FUSE mount of its data, where a
/// removal would delete the user's blobs) is left in place with its
/// parents, as is anything that cannot be looked at (a mount whose server
/// is gone answers `ENOTCONN`). Links are removed, never followed. Returns
/// how many entries were left.
pub fn remove_tree_on_one_filesystem(dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    if !root.is_dir() {
        return usize::from(std::fs::remove_file(dir).is_err());
    }
    fn walk(dir: &Path, dev: u64) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 1;
        };
        let mut left = 0;
        for entry in entries {
            let Ok(entry) = entry else {
                left += 1;
                continue;
            };
            let path = entry.path();
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() && m.dev() == dev => left += walk(&path, dev),
                Ok(m) if m.is_dir() => left += 1,
                Ok(_) => left += usize::from(std::fs::remove_file(&path).is_err()),
                Err(_) => left += 1,
            }
        }
        if left == 0 && std::fs::remove_dir(dir).is_err() {
            left += 1;
        }
        left
    }
    walk(dir, root.dev())
}

#[cfg(test)]
mod one_filesystem_tests {
    use super::*;

    #[test]
    fn a_tree_goes_but_never_through_a_link() {
        let dir = std::env::temp_dir().join(format!("strato-files-test-{}", std::process::id()));
        let outside = dir.with_extension("outside");
        std::fs::create_dir_all(dir.join("a/b")).expect("dirs");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(dir.join("a/b/f"), "f").expect("file");
        std::fs::write(outside.join("keep"), "keep").expect("file");
        std::os::unix::fs::symlink(&outside, dir.join("a/link")).expect("link");
        assert_eq!(remove_tree_on_one_filesystem(&dir), 0);
        assert!(!dir.exists());
        assert!(outside.join("keep").exists(), "a link is not followed");
        std::fs::remove_dir_all(&outside).expect("clean up");
        // (A mount inside is left: the mount tests show it with a FUSE mount.)
        assert_eq!(remove_tree_on_one_filesystem(Path::new("/nonexistent")), 0);
    }
}
