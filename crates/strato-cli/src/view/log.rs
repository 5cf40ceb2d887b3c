//! `strato job logs`: log lines as they arrive, as text, JSON Lines or one
//! YAML list.

use serde::Serialize;
use strato_proto::v1;

use super::{Format, ts};

/// `job logs -o json`: one object per log line.
#[derive(Debug, Serialize)]
pub struct LogLineView {
    pub attempt: u32,
    /// The node rank that wrote it (0 for single-node jobs).
    pub rank: u32,
    pub stream: &'static str,
    pub line: String,
    pub seq: u64,
    pub at: String,
}

impl From<v1::LogLine> for LogLineView {
    fn from(l: v1::LogLine) -> Self {
        LogLineView {
            attempt: l.attempt,
            rank: l.rank,
            stream: match v1::LogStream::try_from(l.stream) {
                Ok(v1::LogStream::Stdout) => "stdout",
                Ok(v1::LogStream::Stderr) => "stderr",
                _ => "unknown",
            },
            line: l.line,
            seq: l.seq,
            at: ts(l.at.as_ref()),
        }
    }
}

/// Renders a stream of log lines as they arrive. As a table: each line's
/// text (stdout and stderr alike), with `--- attempt N ---` before the first
/// line of an attempt other than the first one seen (and before the first
/// line if it is not attempt 1), and `[rank N] ` before lines that other
/// nodes than rank 0 of a multi-node job wrote. As JSON: one object per
/// line (JSON Lines).
/// As YAML: one sequence item per line, so the whole output is one list.
#[derive(Debug)]
pub struct LogPrinter {
    format: Format,
    attempt: Option<u32>,
}

impl LogPrinter {
    pub fn new(format: Format) -> Self {
        LogPrinter {
            format,
            attempt: None,
        }
    }

    /// The text to print for `line`, ending in a newline.
    pub fn render(&mut self, line: v1::LogLine) -> anyhow::Result<String> {
        let view = LogLineView::from(line);
        Ok(match self.format {
            Format::Table | Format::Tsv => {
                let mut out = String::new();
                let changed = match self.attempt {
                    None => view.attempt > 1,
                    Some(previous) => previous != view.attempt,
                };
                if changed {
                    out.push_str(&format!("--- attempt {} ---\n", view.attempt));
                }
                self.attempt = Some(view.attempt);
                if view.rank > 0 {
                    out.push_str(&format!("[rank {}] ", view.rank));
                }
                let text = view.line.strip_suffix('\n').unwrap_or(&view.line);
                escape_controls(text.strip_suffix('\r').unwrap_or(text), &mut out);
                out.push('\n');
                out
            }
            Format::Json => format!("{}\n", serde_json::to_string(&view)?),
            Format::Yaml => serde_norway::to_string(&[view])?,
        })
    }
}

/// Appends `text` with its control characters (but tab) written as `\xNN`
/// or `\u{NNNN}`: a job's output reaches the terminal as text, never as
/// escape sequences that move the cursor, retitle the window or write the
/// clipboard.
pub(crate) fn escape_controls(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls, and the bidirectional overrides and isolates
            // that make text read other than it is.
            c if ('\u{80}'..='\u{9f}').contains(&c)
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(attempt: u32, stream: v1::LogStream, seq: u64, line: &str) -> v1::LogLine {
        v1::LogLine {
            attempt,
            stream: stream as i32,
            line: line.into(),
            at: Some(prost_types::Timestamp {
                seconds: 60,
                nanos: 0,
            }),
            seq,
            rank: 0,
            pos: seq,
        }
    }

    #[test]
    fn control_characters_reach_the_terminal_escaped() {
        let mut p = LogPrinter::new(Format::Table);
        let text = p
            .render(log(
                1,
                v1::LogStream::Stdout,
                0,
                "\u{1b}]52;c;aGk=\u{7}red\u{1b}[31m\tx\u{9b}2J\r",
            ))
            .expect("render");
        assert_eq!(text, "\\x1b]52;c;aGk=\\x07red\\x1b[31m\tx\\u{009b}2J\n");
        let json = LogPrinter::new(Format::Json)
            .render(log(1, v1::LogStream::Stdout, 0, "\u{1b}[2J"))
            .expect("render");
        assert!(
            json.contains("\\u001b[2J"),
            "JSON escapes them itself: {json}"
        );
    }

    #[test]
    fn log_lines_as_text_mark_attempt_changes() {
        use v1::LogStream::{Stderr, Stdout};
        let mut p = LogPrinter::new(Format::Table);
        let mut out = String::new();
        for l in [
            log(1, Stdout, 0, "epoch 1"),
            log(1, Stderr, 1, "warning: slow\n"),
            log(2, Stdout, 0, "epoch 1 again"),
            log(2, Stdout, 1, ""),
        ] {
            out.push_str(&p.render(l).expect("renders"));
        }
        assert_eq!(
            out,
            "epoch 1\nwarning: slow\n--- attempt 2 ---\nepoch 1 again\n\n"
        );
        // Other ranks of a gang are marked.
        let mut p = LogPrinter::new(Format::Table);
        let mut worker = log(1, Stdout, 0, "up");
        worker.rank = 1;
        assert_eq!(p.render(worker).expect("renders"), "[rank 1] up\n");
        // Starting at a later attempt says which one it is.
        let mut p = LogPrinter::new(Format::Table);
        assert_eq!(
            p.render(log(3, Stdout, 0, "x")).expect("renders"),
            "--- attempt 3 ---\nx\n"
        );
    }

    #[test]
    fn log_lines_as_json_are_one_object_per_line() {
        let mut p = LogPrinter::new(Format::Json);
        let a = p
            .render(log(1, v1::LogStream::Stdout, 0, "a"))
            .expect("renders");
        let b = p
            .render(log(2, v1::LogStream::Stderr, 7, "b"))
            .expect("renders");
        assert_eq!(
            a,
            "{\"attempt\":1,\"rank\":0,\"stream\":\"stdout\",\"line\":\"a\",\"seq\":0,\"at\":\"1970-01-01T00:01:00Z\"}\n"
        );
        assert!(!b.contains("---"));
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["seq"], 7);
    }

    #[test]
    fn log_lines_as_yaml_make_one_list() {
        let mut p = LogPrinter::new(Format::Yaml);
        let mut out = String::new();
        for seq in 0..2 {
            out.push_str(
                &p.render(log(1, v1::LogStream::Stdout, seq, "l"))
                    .expect("renders"),
            );
        }
        let v: Vec<serde_json::Value> = serde_norway::from_str(&out).expect("yaml");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["seq"], 1);
    }
}
