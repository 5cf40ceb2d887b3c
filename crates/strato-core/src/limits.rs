//! Bounds on what one job can cost the agent and the control plane.
//!
//! Its output: a line is at most [`MAX_LOG_LINE_BYTES`] (longer output is
//! split into several lines, never dropped), and a batch the agent sends is
//! at most [`MAX_LOG_BATCH_LINES`] lines and [`MAX_LOG_BATCH_BYTES`], far
//! below gRPC's 4 MiB message limit, so no output can make a message the
//! stream refuses.
//!
//! Its spec, checked at submit ([`check_job_size`]): the environment and the
//! command are bounded in entries and bytes (the command's per-argument
//! bound is Linux's `MAX_ARG_STRLEN`), and the image reference in length
//! and grammar (`crate::image`).

use crate::error::FieldError;

/// The longest reason an agent's report may give a job (what it is doing,
/// why an attempt ended); longer ones are cut, marked with `…`.
pub const MAX_REASON_BYTES: usize = 1024;

/// `reason` cut to [`MAX_REASON_BYTES`] at a character boundary, its NUL
/// characters replaced ([`without_nul`]).
pub fn bounded_reason(reason: &str) -> String {
    let reason = &without_nul(reason);
    if reason.len() <= MAX_REASON_BYTES {
        return reason.clone().into_owned();
    }
    let mut end = MAX_REASON_BYTES - '…'.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// `text` with each NUL character replaced by U+FFFD: what a node sends
/// (output, reasons, its host name) is stored as text, which PostgreSQL
/// refuses with a NUL in it.
pub fn without_nul(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The most lines stored of one attempt on one node; the rest is dropped
/// after one marker line that says so ([`stored_line`]).
pub const MAX_STORED_LINES_PER_RANK: u64 = 200_000;

/// The most bytes of output the store keeps of one attempt on one node
/// (the default of `--max-log-bytes-per-attempt`): past it, one marker line
/// says so, and the rest is not kept.
pub const MAX_STORED_BYTES_PER_RANK: u64 = 100 * 1024 * 1024;

/// How much of an attempt's output on one node the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBudget {
    pub lines: u64,
    pub bytes: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            lines: MAX_STORED_LINES_PER_RANK,
            bytes: MAX_STORED_BYTES_PER_RANK,
        }
    }
}

/// What the store keeps of the line numbered `seq` (from 0, per attempt
/// and node, as agents number them), `len` bytes long, when `stored` bytes
/// of that attempt and node are kept and `truncated` says whether the
/// marker is: the line within the budget; the truncation marker in place
/// of the first line past it (its line count or its bytes); nothing after.
pub fn stored_line(
    seq: u64,
    len: u64,
    stored: u64,
    truncated: bool,
    budget: LogBudget,
) -> StoredLine {
    if truncated {
        return StoredLine::Dropped;
    }
    if seq >= budget.lines {
        return StoredLine::Marker(format!(
            "[strato] output truncated: only the first {} lines of this attempt on this node are kept",
            budget.lines
        ));
    }
    if stored.saturating_add(len) > budget.bytes {
        return StoredLine::Marker(format!(
            "[strato] output truncated: only the first {} bytes of this attempt on this node are kept",
            budget.bytes
        ));
    }
    StoredLine::Line
}

/// See [`stored_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredLine {
    Line,
    /// This text instead of the line.
    Marker(String),
    Dropped,
}

/// The most environment variables a job may set.
pub const MAX_ENV_ENTRIES: usize = 1_000;
/// The longest environment variable name, in bytes.
pub const MAX_ENV_KEY_BYTES: usize = 256;
/// The longest environment variable value, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// All names and values together, in bytes.
pub const MAX_ENV_TOTAL_BYTES: usize = 256 * 1024;
/// The most arguments in a command, the program included.
pub const MAX_COMMAND_ARGS: usize = 4_096;
/// The longest argument, in bytes (Linux's `MAX_ARG_STRLEN`).
pub const MAX_COMMAND_ARG_BYTES: usize = 128 * 1024;
/// All arguments together, in bytes.
pub const MAX_COMMAND_TOTAL_BYTES: usize = 256 * 1024;

/// The most inputs, and the most outputs, of one job.
pub const MAX_DATA_BINDINGS: usize = 64;
/// The longest input or output URI, in bytes.
pub const MAX_DATA_URI_BYTES: usize = 1024;
/// The longest input or output mode, in bytes (`download`, `ro_mount`, ...).
pub const MAX_DATA_MODE_BYTES: usize = 16;

/// A code folder (`code:`) as Azure ML bounds a snapshot: at most this many
/// bytes and files, each path at most this long, sent in chunks of at most
/// `MAX_CODE_CHUNK_BYTES`.
pub const MAX_CODE_BYTES: u64 = 300 * 1000 * 1000;
pub const MAX_CODE_FILES: u32 = 2_000;
pub const MAX_CODE_PATH_BYTES: usize = 1024;
pub const MAX_CODE_CHUNK_BYTES: usize = 1024 * 1024;

/// Checks the count of a job's inputs or outputs (`field`) and the length
/// of each name and URI, before any is looked up.
pub fn check_data(field: &str, data: &[crate::job_request::DataRequest]) -> Result<(), FieldError> {
    if data.len() > MAX_DATA_BINDINGS {
        return Err(FieldError::new(
            field,
            format!("has {} entries; at most {MAX_DATA_BINDINGS}", data.len()),
        ));
    }
    for (i, d) in data.iter().enumerate() {
        if d.uri.len() > MAX_DATA_URI_BYTES
            || d.name.len() > MAX_ENV_KEY_BYTES
            || d.mode.len() > MAX_DATA_MODE_BYTES
        {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!(
                    "a name is at most {MAX_ENV_KEY_BYTES} bytes, a URI at most {MAX_DATA_URI_BYTES} and a mode at most {MAX_DATA_MODE_BYTES}"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the sizes of a job's image, environment and command; the error
/// names the field and the limit.
pub fn check_job_size<'a>(
    image: &str,
    environment: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    command: &[String],
) -> Result<(), FieldError> {
    if let Some(why) = crate::image::problem(image) {
        return Err(FieldError::new("image", why));
    }
    let entries = environment.len();
    if entries > MAX_ENV_ENTRIES {
        return Err(FieldError::new(
            "environment",
            format!("has {entries} variables; at most {MAX_ENV_ENTRIES}"),
        ));
    }
    let mut total = 0usize;
    for (key, value) in environment {
        if key.len() > MAX_ENV_KEY_BYTES {
            return Err(FieldError::new(
                "environment",
                format!("a name is {} bytes; at most {MAX_ENV_KEY_BYTES}", key.len()),
            ));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return Err(FieldError::new(
                format!("environment[{key:?}]"),
                format!("is {} bytes; at most {MAX_ENV_VALUE_BYTES}", value.len()),
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(FieldError::new(
            "environment",
            format!("is {total} bytes in all; at most {MAX_ENV_TOTAL_BYTES}"),
        ));
    }
    if command.len() > MAX_COMMAND_ARGS {
        return Err(FieldError::new(
            "command",
            format!(
                "has {} arguments; at most {MAX_COMMAND_ARGS}",
                command.len()
            ),
        ));
    }
    if let Some((i, arg)) = command
        .iter()
        .enumerate()
        .find(|(_, a)| a.len() > MAX_COMMAND_ARG_BYTES)
    {
        return Err(FieldError::new(
            format!("command[{i}]"),
            format!("is {} bytes; at most {MAX_COMMAND_ARG_BYTES}", arg.len()),
        ));
    }
    let total: usize = command.iter().map(String::len).sum();
    if total > MAX_COMMAND_TOTAL_BYTES {
        return Err(FieldError::new(
            "command",
            format!("is {total} bytes in all; at most {MAX_COMMAND_TOTAL_BYTES}"),
        ));
    }
    Ok(())
}

/// The longest log line kept as one line, in bytes.
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
/// The most lines in one log batch.
pub const MAX_LOG_BATCH_LINES: usize = 256;
/// The most bytes of lines in one log batch.
pub const MAX_LOG_BATCH_BYTES: usize = 256 * 1024;

/// Where to cut `bytes` so that the first part is at most `max` bytes and
/// does not end inside a UTF-8 character (a character cut in two would come
/// out as two replacement characters) when `max` leaves room for one (4
/// bytes). Always at least 1 when `bytes` is not empty, so splitting makes
/// progress even on bytes that are not UTF-8.
pub fn cut_at(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let max = max.max(1);
    // A UTF-8 continuation byte is 0b10xx_xxxx: back up to a boundary,
    // at most 3 bytes (the longest character is 4).
    let mut cut = max;
    while cut > 0 && max - cut < 3 && (bytes[cut] & 0b1100_0000) == 0b1000_0000 {
        cut -= 1;
    }
    let on_boundary = (bytes[cut] & 0b1100_0000) != 0b1000_0000;
    if cut == 0 || !on_boundary {
        // No character starts near `max`: not UTF-8 there, cut where asked.
        max
    } else {
        cut
    }
}

/// Splits `items` (each with its size in bytes) into runs of at most
/// `max_items` items and `max_bytes` bytes; an item larger than
/// `max_bytes` on its own gets a run of its own. Returns the runs' lengths,
/// in order.
pub fn batch_lengths(sizes: &[usize], max_items: usize, max_bytes: usize) -> Vec<usize> {
    let mut runs = Vec::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    for &size in sizes {
        if count > 0 && (count == max_items || bytes.saturating_add(size) > max_bytes) {
            runs.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes = bytes.saturating_add(size);
    }
    if count > 0 {
        runs.push(count);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cut_never_splits_a_character() {
        let text = "aé€😀".repeat(3);
        let bytes = text.as_bytes();
        for max in 1..bytes.len() {
            let cut = cut_at(bytes, max);
            assert!(cut <= max && cut > 0, "max {max}: cut {cut}");
            // Room for the longest character: never inside one.
            if max >= 4 {
                assert!(
                    std::str::from_utf8(&bytes[..cut]).is_ok(),
                    "max {max}: cut {cut}"
                );
            }
        }
        assert_eq!(cut_at(b"short", 16), 5);
        assert_eq!(cut_at(&[0x80; 10], 4), 4, "not UTF-8: cut where asked");
    }

    #[test]
    fn data_bindings_are_bounded_before_they_are_looked_up() {
        use crate::job_request::DataRequest;
        let d = |uri: &str| DataRequest {
            name: "n".into(),
            uri: uri.into(),
            mode: String::new(),
        };
        assert!(check_data("inputs", &[d("azureml://datastores/a/paths/b")]).is_ok());
        let many = vec![d("x"); MAX_DATA_BINDINGS + 1];
        let e = check_data("inputs", &many)
            .expect_err("too many")
            .to_string();
        assert!(e.starts_with("inputs") && e.contains("at most 64"), "{e}");
        let e = check_data("outputs", &[d(&"u".repeat(2000))])
            .expect_err("too long")
            .to_string();
        assert!(e.starts_with("outputs[0]"), "{e}");
    }

    #[test]
    fn lines_past_the_bound_leave_one_marker() {
        let budget = LogBudget {
            lines: 3,
            bytes: 100,
        };
        assert_eq!(stored_line(0, 10, 0, false, budget), StoredLine::Line);
        assert_eq!(stored_line(2, 10, 20, false, budget), StoredLine::Line);
        assert!(matches!(
            stored_line(3, 10, 30, false, budget),
            StoredLine::Marker(m) if m.contains("first 3 lines")
        ));
        assert_eq!(stored_line(4, 10, 30, true, budget), StoredLine::Dropped);
        // The bytes bound: the line that would pass it becomes the marker.
        assert_eq!(stored_line(1, 60, 40, false, budget), StoredLine::Line);
        assert!(matches!(
            stored_line(1, 61, 40, false, budget),
            StoredLine::Marker(m) if m.contains("first 100 bytes")
        ));
        assert_eq!(stored_line(2, 1, 40, true, budget), StoredLine::Dropped);
    }

    #[test]
    fn batches_respect_both_bounds() {
        assert_eq!(batch_lengths(&[1; 5], 2, 100), vec![2, 2, 1]);
        assert_eq!(batch_lengths(&[60, 60, 60], 10, 100), vec![1, 1, 1]);
        assert_eq!(batch_lengths(&[500, 1, 1], 10, 100), vec![1, 2]);
        assert!(batch_lengths(&[], 10, 100).is_empty());
    }

    #[test]
    fn oversized_specs_are_refused_naming_the_field_and_the_limit() {
        use std::collections::BTreeMap;
        let env = |n: usize, value: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("K{i}"), "v".repeat(value)))
                .collect()
        };
        let cmd = vec!["true".to_owned()];
        let ok = env(3, 10);
        assert!(check_job_size("busybox", ok.iter(), &cmd).is_ok());
        let refused = |image: &str, env: &BTreeMap<String, String>, cmd: &[String]| {
            check_job_size(image, env.iter(), cmd)
                .expect_err("refused")
                .to_string()
        };
        let e = refused(&"a".repeat(3_000_000), &ok, &cmd);
        assert!(e.starts_with("image") && e.contains("at most 512"), "{e}");
        let e = refused("busybox", &env(20_000, 1), &cmd);
        assert!(
            e.starts_with("environment") && e.contains("20000") && e.contains("1000"),
            "{e}"
        );
        let e = refused("busybox", &env(1, MAX_ENV_VALUE_BYTES + 1), &cmd);
        assert!(e.starts_with("environment[\"K0\"]"), "{e}");
        let e = refused("busybox", &env(10, 30 * 1024), &cmd);
        assert!(e.contains("in all"), "{e}");
        let many: Vec<String> = (0..200_000).map(|i| i.to_string()).collect();
        let e = refused("busybox", &ok, &many);
        assert!(e.starts_with("command") && e.contains("4096"), "{e}");
        let e = refused(
            "busybox",
            &ok,
            &["sh".into(), "x".repeat(MAX_COMMAND_ARG_BYTES + 1)],
        );
        assert!(e.starts_with("command[1]"), "{e}");
    }

    proptest! {
        #[test]
        fn batches_cover_every_item_within_the_bounds(
            sizes in proptest::collection::vec(0usize..300, 0..200),
            max_items in 1usize..20,
            max_bytes in 1usize..1000,
        ) {
            let runs = batch_lengths(&sizes, max_items, max_bytes);
            prop_assert_eq!(runs.iter().sum::<usize>(), sizes.len());
            let mut at = 0;
            for run in runs {
                prop_assert!(run >= 1 && run <= max_items);
                let bytes: usize = sizes[at..at + run].iter().sum();
                prop_assert!(run == 1 || bytes <= max_bytes);
                at += run;
            }
        }
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_reason("pulling image 41%"), "pulling image 41%");
        assert_eq!(bounded_reason("a\0b"), "a\u{FFFD}b", "no NUL is stored");
        assert!(matches!(
            without_nul("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_reason(&long);
        assert!(
            cut.len() <= MAX_REASON_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
    }
}
