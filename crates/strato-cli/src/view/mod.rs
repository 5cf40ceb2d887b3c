//! What the CLI prints: views of wire messages with stable keys (one module
//! per kind of output), rendered as a table (for people), JSON or YAML (for
//! programs).

pub mod access;
pub mod cluster;
pub mod datastore;
pub mod job;
pub mod log;
pub mod node;
pub mod registry;
pub mod size;
pub mod usage;

use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;
use strato_proto::convert::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Something the CLI can print: serialisable for JSON/YAML, and with a
/// table form for people.
pub trait Render: Serialize {
    fn table(&self) -> Table;
}

/// Rows of cells; the first row is the header. Further sections (each its
/// own table, aligned on its own) follow after a blank line.
pub struct Table {
    rows: Vec<Vec<String>>,
    sections: Vec<Table>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            sections: Vec::new(),
        }
    }

    /// A two-column KEY/VALUE table for one object.
    pub fn properties(pairs: Vec<(&str, String)>) -> Self {
        let mut t = Table {
            rows: Vec::new(),
            sections: Vec::new(),
        };
        for (k, v) in pairs {
            t.rows.push(vec![k.to_owned(), v]);
        }
        t
    }

    /// Lines of text as they are: a section without columns.
    pub fn lines(lines: Vec<String>) -> Self {
        Table {
            rows: lines.into_iter().map(|l| vec![l]).collect(),
            sections: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Appends `section`, printed after a blank line with its own columns.
    pub fn section(&mut self, section: Table) {
        self.sections.push(section);
    }

    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        for section in &self.sections {
            writeln!(out)?;
            section.write(out)?;
        }
        Ok(())
    }
}

pub fn print(format: Format, value: &impl Render) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        Format::Table => value.table().write(&mut out)?,
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Format::Yaml => write!(out, "{}", serde_norway::to_string(value)?)?,
    }
    Ok(())
}

pub(crate) fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.map(rfc3339).unwrap_or_default()
}

/// `-` for an empty cell.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

impl Render for serde_json::Value {
    fn table(&self) -> Table {
        Table::properties(Vec::new())
    }
}

/// `table` as it prints (for tests of the views).
#[cfg(test)]
pub(crate) fn rendered(table: &Table) -> String {
    let mut out = Vec::new();
    table.write(&mut out).expect("writes");
    String::from_utf8(out).expect("utf8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["long-cell".into(), "x".into()]);
        let mut out = Vec::new();
        t.write(&mut out).expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "A          BB\nlong-cell  x\n"
        );
    }
}
