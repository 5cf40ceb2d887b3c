//! Docker's log frames: the timestamp the engine puts first, and lines
//! reassembled per stream.

use strato_core::limits::{MAX_LOG_LINE_BYTES, cut_at};

use crate::{OutputLine, OutputStream};

/// A frame's output, after the timestamp and space the engine puts first.
pub(crate) fn payload(frame: &[u8]) -> &[u8] {
    frame
        .iter()
        .position(|&b| b == b' ')
        .map_or(frame, |space| &frame[space + 1..])
}

/// The unix time, in whole seconds, of the RFC 3339 UTC timestamp that starts
/// `frame` (`2026-11-23T12:00:38.158405088Z ...`).
pub(crate) fn unix_seconds(frame: &[u8]) -> Option<i64> {
    let stamp = std::str::from_utf8(frame.get(..19)?).ok()?;
    let field = |at: usize, len: usize| stamp.get(at..at + len)?.parse::<i64>().ok();
    let (year, month, day) = (field(0, 4)?, field(5, 2)?, field(8, 2)?);
    let (hour, minute, second) = (field(11, 2)?, field(14, 2)?, field(17, 2)?);
    if !(1..=12).contains(&month) || stamp.as_bytes()[10] != b'T' {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    // days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Emits the front of `buffer` as lines of at most `MAX_LOG_LINE_BYTES`
/// while it is longer than that, so no line, and no buffer, grows past it.
fn split_long(stream: OutputStream, buffer: &mut Vec<u8>, out: &mut Vec<OutputLine>) {
    while buffer.len() > MAX_LOG_LINE_BYTES {
        let cut = cut_at(buffer, MAX_LOG_LINE_BYTES);
        push_line(stream, &buffer[..cut], out);
        buffer.drain(..cut);
    }
}

/// Pushes `bytes` as one or more lines of at most `MAX_LOG_LINE_BYTES`
/// after decoding: a byte that is not UTF-8 becomes U+FFFD, three bytes,
/// so a decoded line can be longer than the bytes were.
fn push_line(stream: OutputStream, bytes: &[u8], out: &mut Vec<OutputLine>) {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    while text.len() > MAX_LOG_LINE_BYTES {
        let mut cut = MAX_LOG_LINE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = text.split_off(cut);
        out.push(OutputLine { stream, line: text });
        text = rest;
    }
    out.push(OutputLine { stream, line: text });
}

/// Splits output into lines per stream: bytes are buffered until a newline,
/// so a line split over frames (or a UTF-8 character split over frames)
/// comes out whole.
#[derive(Default)]
pub(crate) struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineSplitter {
    /// Adds `bytes` of `stream`, appending the lines they complete to `out`.
    pub(crate) fn push(&mut self, stream: OutputStream, bytes: &[u8], out: &mut Vec<OutputLine>) {
        let buffer = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            buffer.extend_from_slice(&rest[..newline]);
            rest = &rest[newline + 1..];
            split_long(stream, buffer, out);
            push_line(stream, buffer, out);
            buffer.clear();
        }
        buffer.extend_from_slice(rest);
        // Output without a newline is kept only up to a line's bound.
        split_long(stream, buffer, out);
    }

    /// Appends the unterminated last line of each stream, if any, to `out`.
    pub(crate) fn flush(&mut self, out: &mut Vec<OutputLine>) {
        for (stream, buffer) in [
            (OutputStream::Stdout, &mut self.stdout),
            (OutputStream::Stderr, &mut self.stderr),
        ] {
            if !buffer.is_empty() {
                push_line(stream, buffer, out);
                buffer.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[(OutputStream, &[u8])]) -> Vec<(OutputStream, String)> {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        for (stream, bytes) in chunks {
            splitter.push(*stream, bytes, &mut out);
        }
        splitter.flush(&mut out);
        out.into_iter().map(|l| (l.stream, l.line)).collect()
    }

    #[test]
    fn lines_are_reassembled_per_stream_and_the_tail_is_flushed() {
        use OutputStream::{Stderr, Stdout};
        let got = split(&[
            (Stdout, b"a1\na"),
            (Stderr, b"e1"),
            (Stdout, b"2\n\nb"),
            (Stderr, b"\ne2\r\n"),
            (Stdout, b"3"),
        ]);
        assert_eq!(
            got,
            vec![
                (Stdout, "a1".to_owned()),
                (Stdout, "a2".to_owned()),
                (Stdout, String::new()),
                (Stderr, "e1".to_owned()),
                (Stderr, "e2\r".to_owned()),
                (Stdout, "b3".to_owned()),
            ]
        );
    }

    #[test]
    fn output_without_a_newline_is_split_at_the_line_bound_and_kept() {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        let total = 6 * 1024 * 1024 + 5;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            splitter.push(OutputStream::Stdout, &chunk[..n], &mut out);
            sent += n;
            assert!(
                splitter.stdout.len() <= MAX_LOG_LINE_BYTES,
                "the buffer stays bounded"
            );
        }
        splitter.push(OutputStream::Stdout, b"\n", &mut out);
        assert!(out.iter().all(|l| l.line.len() <= MAX_LOG_LINE_BYTES));
        assert_eq!(
            out.iter().map(|l| l.line.len()).sum::<usize>(),
            total,
            "nothing dropped"
        );
        assert_eq!(out.len(), total.div_ceil(MAX_LOG_LINE_BYTES));
    }

    #[test]
    fn bytes_that_are_not_utf8_still_make_lines_within_the_bound() {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        splitter.push(
            OutputStream::Stdout,
            &vec![0xff; 3 * MAX_LOG_LINE_BYTES],
            &mut out,
        );
        splitter.push(OutputStream::Stdout, b"\n", &mut out);
        assert!(
            out.iter().all(|l| l.line.len() <= MAX_LOG_LINE_BYTES),
            "{:?}",
            out.iter().map(|l| l.line.len()).collect::<Vec<_>>()
        );
        let replaced: usize = out.iter().map(|l| l.line.chars().count()).sum();
        assert_eq!(
            replaced,
            3 * MAX_LOG_LINE_BYTES,
            "one U+FFFD per byte, none dropped"
        );
    }

    #[test]
    fn a_character_split_over_frames_comes_out_whole() {
        let bytes = "é\n".as_bytes();
        let got = split(&[
            (OutputStream::Stdout, &bytes[..1]),
            (OutputStream::Stdout, &bytes[1..]),
        ]);
        assert_eq!(got, vec![(OutputStream::Stdout, "é".to_owned())]);
    }

    #[test]
    fn the_timestamp_is_cut_from_a_frame_and_read() {
        let frame = b"2026-11-23T12:00:38.158405088Z hello world\n";
        assert_eq!(payload(frame), b"hello world\n");
        assert_eq!(payload(b"2026-11-23T12:00:38.158405088Z "), b"");
        assert_eq!(unix_seconds(frame), Some(1_795_435_238));
        assert_eq!(unix_seconds(b"1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(unix_seconds(b"2000-02-29T23:59:59Z"), Some(951_868_799));
        assert_eq!(unix_seconds(b"not a timestamp at all"), None);
        assert_eq!(unix_seconds(b"short"), None);
    }
}
