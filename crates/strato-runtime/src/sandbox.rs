//! Network sandboxes: containers that do nothing but hold a network
//! namespace on the engine's default bridge, made ready before a job comes
//! so that the job's container joins one (`--network container:<id>`, as
//! Kubernetes' pause containers hold a pod's network) instead of waiting for
//! the engine to set a network up. On the development machine the network
//! is most of what a start costs: `docker run` of a container that prints a
//! line, 330–400 ms on the default bridge, 130–180 ms joining a running
//! container's network (2026-12-07, 2 cores).
//!
//! A sandbox runs `/pause`, a program of three instructions that waits for
//! signals forever, from an image of that one file (`strato/pause:1`) that
//! the runtime writes and loads itself (`docker load`): nothing is pulled,
//! and no image of the node's is assumed. The image's bytes are fixed, so
//! its id is too (the digest of its configuration): sandboxes are made from
//! the image the tag names only when its layer is this program's (by
//! digest), and by id, never the tag, so a job's pull of the same name
//! changes nothing; agents that load it at once make one image, not
//! several. Only x86-64 has the program; on an engine elsewhere jobs start
//! on a network of their own, as without sandboxes.
//!
//! Each job gets a sandbox of its own (its address on the bridge is its
//! own, which the identity endpoint knows its callers by), and the sandbox
//! goes with the job's container.

use std::collections::{BTreeMap, HashSet};

use crate::JobContainer;

/// The image sandboxes run: `/pause` alone.
pub const PAUSE_IMAGE: &str = "strato/pause:1";
/// The program a sandbox runs.
pub(crate) const PAUSE_PROGRAM: &str = "/pause";
/// A sandbox's memory limit: the engine's least (6 MiB) and some.
pub(crate) const SANDBOX_MEMORY_BYTES: u64 = 8 * 1024 * 1024;

/// Whose sandboxes a runtime keeps, and the one kept ready.
#[derive(Debug, Default)]
pub(crate) struct Sandboxes {
    /// The node whose jobs they serve, and the labels each one carries; set
    /// by `prepare_networks`, none before it (no sandbox is made).
    pub owner: Option<(String, BTreeMap<String, String>)>,
    /// The pause image's id, once the engine has it.
    pub image: Option<String>,
    /// The sandbox kept ready, by container id.
    pub spare: Option<String>,
    /// The name of the one being made.
    pub making: Option<String>,
    /// Taken by starts not yet done: held, though no container names them
    /// yet.
    pub joining: HashSet<String>,
    /// Goes up whenever the owner changes or is released: a sandbox made
    /// for an earlier owner is not kept.
    pub generation: u64,
    /// Numbers the sandboxes' names: from the time (in nanoseconds) the
    /// owner was set, so a restarted agent's names never meet those of the
    /// sandboxes its running jobs still hold.
    pub next: u64,
}

/// The sandboxes of `found` that nothing holds: not among `held` (named by
/// a container's label, the spare, being joined) and not the one being
/// made (`making`, by name: its id is not known yet).
pub(crate) fn unheld<'a>(
    found: &'a [JobContainer],
    held: &'a HashSet<String>,
    making: Option<&'a str>,
) -> impl Iterator<Item = &'a JobContainer> + 'a {
    found
        .iter()
        .filter(move |s| !held.contains(&s.id) && making != Some(s.name.as_str()))
}

/// The engine's name (`docker info`'s `Architecture`) for the machines
/// that run the pause program.
pub(crate) const PAUSE_ARCHITECTURE: &str = "x86_64";

/// `sha256:<hex>` of `bytes`.
fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The digest of the pause image's one layer, as the engine lists it
/// (`RootFS.Layers`): what names its content on any image store.
pub(crate) fn pause_layer_digest() -> String {
    digest(&pause_layer())
}

/// The pause image's configuration: fixed bytes (no creation time), so
/// loading it again, on one node or at once by several agents, makes the
/// same image rather than another.
fn pause_config() -> String {
    format!(
        r#"{{"architecture":"amd64","config":{{"Entrypoint":["{PAUSE_PROGRAM}"],"User":"65534:65534"}},"os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        pause_layer_digest()
    )
}

/// The pause image as `docker save` writes it, for `docker load`: its
/// configuration, its one layer and the manifest tagging it
/// [`PAUSE_IMAGE`].
pub(crate) fn pause_archive() -> Vec<u8> {
    let config = pause_config();
    let config_file = format!("{}.json", &digest(config.as_bytes())["sha256:".len()..]);
    let manifest = format!(
        r#"[{{"Config":"{config_file}","RepoTags":["{PAUSE_IMAGE}"],"Layers":["layer.tar"]}}]"#
    );
    tar(&[
        ("manifest.json", manifest.as_bytes(), 0o644),
        (&config_file, config.as_bytes(), 0o644),
        ("layer.tar", &pause_layer(), 0o644),
    ])
}

/// The pause program: a static x86-64 Linux executable (one loadable
/// segment, no libraries) whose code is `pause(2)` in a loop. As a
/// container's first process it ignores SIGTERM (no handler); the runtime
/// removes sandboxes with SIGKILL.
pub(crate) fn pause_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADER: u64 = 64;
    const PROGRAM_HEADER: u64 = 56;
    let code: [u8; 9] = [
        0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34 (pause)
        0x0f, 0x05, // syscall
        0xeb, 0xf7, // jmp back to the mov
    ];
    let size = HEADER + PROGRAM_HEADER + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little-endian, version 1, System V.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // an executable
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADER + PROGRAM_HEADER).to_le_bytes()); // entry
    elf.extend_from_slice(&HEADER.to_le_bytes()); // program headers' offset
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    elf.extend_from_slice(&(HEADER as u16).to_le_bytes());
    elf.extend_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes()); // one program header
    elf.extend_from_slice(&[0; 6]); // section header size, count, names
    // The one program header: the whole file, loaded read and execute.
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    elf.extend_from_slice(&0u64.to_le_bytes()); // from the file's start
    elf.extend_from_slice(&BASE.to_le_bytes()); // virtual address
    elf.extend_from_slice(&BASE.to_le_bytes()); // physical address
    elf.extend_from_slice(&size.to_le_bytes()); // in the file
    elf.extend_from_slice(&size.to_le_bytes()); // in memory
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // page alignment
    elf.extend_from_slice(&code);
    elf
}

/// The pause image's one layer: a tar of the one file `pause`,
/// executable, owned by root.
pub(crate) fn pause_layer() -> Vec<u8> {
    tar(&[("pause", &pause_program(), 0o755)])
}

/// A tar archive (POSIX ustar) of regular files (name of at most 100
/// bytes, contents, mode), owned by root, dated 1970: the same bytes for
/// the same files.
fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, contents, mode) in files {
        let mut header = [0u8; 512];
        let mut field = |at: usize, value: &[u8]| {
            header[at..at + value.len()].copy_from_slice(value);
        };
        field(0, &name.as_bytes()[..name.len().min(100)]);
        field(100, format!("{mode:07o}\0").as_bytes());
        field(108, b"0000000\0");
        field(116, b"0000000\0");
        field(124, format!("{:011o}\0", contents.len()).as_bytes());
        field(136, b"00000000000\0");
        field(156, b"0"); // a regular file
        field(257, b"ustar\0");
        field(263, b"00");
        // The checksum counts its own field as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        tar.extend_from_slice(&header);
        tar.extend_from_slice(contents);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    // Two empty blocks end the archive.
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
    }

    /// An octal number of a tar header field, without its NULs and spaces.
    fn octal(field: &[u8]) -> u64 {
        let text = std::str::from_utf8(field).expect("ASCII");
        u64::from_str_radix(text.trim_matches(|c| c == '\0' || c == ' '), 8).expect("octal")
    }

    #[test]
    fn only_sandboxes_nothing_holds_are_unheld() {
        let sandbox = |id: &str, name: &str| JobContainer {
            id: id.to_owned(),
            name: name.to_owned(),
            labels: BTreeMap::new(),
            running: true,
            exit_code: None,
        };
        let found = [
            sandbox("a", "strato-sandbox-n-1"),
            sandbox("b", "strato-sandbox-n-2"),
            sandbox("c", "strato-sandbox-n-3"),
            sandbox("d", "strato-sandbox-n-4"),
        ];
        let held = HashSet::from(["a".to_owned(), "c".to_owned()]);
        let ids = |held: &HashSet<String>, making: Option<&str>| -> Vec<String> {
            unheld(&found, held, making).map(|s| s.id.clone()).collect()
        };
        assert_eq!(ids(&held, Some("strato-sandbox-n-4")), ["b"]);
        assert_eq!(ids(&HashSet::new(), None), ["a", "b", "c", "d"]);
    }

    #[test]
    fn the_pause_program_is_one_loadable_segment_entered_at_its_code() {
        let elf = pause_program();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf.len(), 64 + 56 + 9);
        let entry = u64_at(&elf, 24);
        assert_eq!(
            entry - 0x40_0000,
            120,
            "the entry is the code after the headers"
        );
        let filesz = u64_at(&elf, 64 + 32);
        assert_eq!(filesz, elf.len() as u64);
        // The jump goes back to the first instruction.
        assert_eq!(i8::from_le_bytes([elf[120 + 9 - 1]]), -9);
    }

    #[test]
    fn the_layer_is_a_tar_of_the_pause_program_with_a_valid_checksum() {
        let tar = pause_layer();
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..6], b"pause\0");
        assert_eq!(&tar[257..263], b"ustar\0");
        let recorded = octal(&tar[148..156]);
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(recorded, header.iter().map(|&b| u64::from(b)).sum::<u64>());
        let size = usize::try_from(octal(&tar[124..136])).expect("size");
        assert_eq!(&tar[512..512 + size], pause_program().as_slice());
    }
}
