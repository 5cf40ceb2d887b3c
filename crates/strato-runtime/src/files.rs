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
/// is gone answers `ENOTCONN`). Each directory is opened without following
/// links (`O_NOFOLLOW`) and checked on the opened descriptor, and entries
/// are removed relative to it (`unlinkat`), so a link or a mount put in
/// place meanwhile is never walked into (std's `remove_dir_all` is safe
/// against links the same way, but crosses mounts). Returns how many
/// entries were left.
pub fn remove_tree_on_one_filesystem(dir: &Path) -> usize {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags};
    // NONBLOCK: a FIFO is never waited on (O_DIRECTORY refuses it first).
    let flags =
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(root) = rustix::fs::openat(CWD, dir, flags, Mode::empty()) else {
        // Not there, or not a directory (a file or a link): removed as is.
        return usize::from(
            std::fs::symlink_metadata(dir).is_ok() && std::fs::remove_file(dir).is_err(),
        );
    };
    let Ok(stat) = rustix::fs::fstat(&root) else {
        return 1;
    };
    let left = empty_directory(&root, stat.st_dev, flags);
    drop(root);
    if left == 0 && rustix::fs::unlinkat(CWD, dir, AtFlags::REMOVEDIR).is_err() {
        return 1;
    }
    left
}

/// Removes what the open directory `dir` holds, on device `dev` only.
fn empty_directory(
    dir: &rustix::fd::OwnedFd,
    dev: rustix::fs::Dev,
    flags: rustix::fs::OFlags,
) -> usize {
    use rustix::fs::{AtFlags, Mode};
    let Ok(fd) = rustix::fs::openat(dir, c".", flags, Mode::empty()) else {
        return 1;
    };
    let Ok(entries) = rustix::fs::Dir::new(fd) else {
        return 1;
    };
    let mut left = 0;
    for entry in entries {
        let Ok(entry) = entry else {
            left += 1;
            break;
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        // A directory, opened without following a link, on this device.
        match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(child) => {
                let same_device = rustix::fs::fstat(&child).is_ok_and(|s| s.st_dev == dev);
                if !same_device {
                    left += 1;
                    continue;
                }
                let inner = empty_directory(&child, dev, flags);
                drop(child);
                left += inner;
                if inner == 0 && rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).is_err() {
                    left += 1;
                }
            }
            // Not a directory (or a link to one): the entry itself goes. A
            // mount point that cannot be opened (ENOTCONN) fails here too and
            // is left.
            Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                if rustix::fs::unlinkat(dir, name, AtFlags::empty()).is_err() {
                    left += 1;
                }
            }
            Err(_) => left += 1,
        }
    }
    left
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
        std::os::unix::fs::symlink(outside.join("keep"), dir.join("a/b/file-link")).expect("link");
        let fifo = std::process::Command::new("mkfifo")
            .arg(dir.join("a/fifo"))
            .status();
        assert!(fifo.is_ok_and(|s| s.success()), "mkfifo");
        assert_eq!(remove_tree_on_one_filesystem(&dir), 0);
        assert!(!dir.exists());
        assert!(outside.join("keep").exists(), "a link is not followed");
        std::fs::remove_dir_all(&outside).expect("clean up");
        // (A mount inside is left: the mount tests show it with a FUSE mount.)
        assert_eq!(remove_tree_on_one_filesystem(Path::new("/nonexistent")), 0);
    }
}
