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
    Tsv,
}

/// The `--query` of this run, compiled once.
static QUERY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the run's `--query`, refused when it is not JMESPath.
pub fn set_query(query: &str) -> Result<(), String> {
    jmespath::compile(query).map_err(|e| e.to_string())?;
    let _ = QUERY.set(query.to_owned());
    Ok(())
}

/// `value` after the run's `--query`, if there is one.
fn queried(value: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let Some(query) = QUERY.get() else {
        return Ok(value);
    };
    let expression = jmespath::compile(query)?;
    let found = expression.search(value)?;
    Ok(serde_json::to_value(&*found)?)
}

/// A JSON value as az's tsv prints it: a scalar as its text, an object's
/// values on one line, a list one element a line.
fn tsv(value: &serde_json::Value, out: &mut impl Write) -> std::io::Result<()> {
    fn cell(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            // Nested objects and lists are left out of a row, as az does.
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => String::new(),
            other => other.to_string(),
        }
    }
    fn row(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::Object(map) => Some(
                map.values()
                    .filter(|v| !v.is_object() && !v.is_array())
                    .map(cell)
                    .collect::<Vec<_>>()
                    .join("\t"),
            ),
            serde_json::Value::Array(items) => {
                Some(items.iter().map(cell).collect::<Vec<_>>().join("\t"))
            }
            serde_json::Value::Null => None,
            scalar => Some(cell(scalar)),
        }
    }
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                if let Some(line) = row(item) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        other => {
            if let Some(line) = row(other) {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
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
    if QUERY.get().is_none() {
        match format {
            Format::Table => value.table().write(&mut out)?,
            Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
            Format::Yaml => write!(out, "{}", serde_norway::to_string(value)?)?,
            Format::Tsv => tsv(&serde_json::to_value(value)?, &mut out)?,
        }
        return Ok(());
    }
    // A query's result has no table of its own: JSON, as az prints it.
    let found = queried(serde_json::to_value(value)?)?;
    match format {
        Format::Table | Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&found)?)?,
        Format::Yaml => write!(out, "{}", serde_norway::to_string(&found)?)?,
        Format::Tsv => tsv(&found, &mut out)?,
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

#[cfg(test)]
mod tsv_tests {
    use super::*;

    fn tsv_of(v: serde_json::Value) -> String {
        let mut out = Vec::new();
        tsv(&v, &mut out).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    /// As `az -o tsv`: scalars bare, a row per list element, nested values
    /// left out; a JMESPath query picks what is printed.
    #[test]
    fn tsv_prints_values_as_az_does() {
        let clusters = serde_json::json!([
            {"name": "cpu", "max_instances": 4, "tags": {"a": "b"}, "tier": "dedicated"},
            {"name": "gpu", "max_instances": 2, "tags": {}, "tier": "low_priority"},
        ]);
        // Columns in key order (alphabetical).
        assert_eq!(
            tsv_of(clusters.clone()),
            "4\tcpu\tdedicated\n2\tgpu\tlow_priority\n"
        );
        assert_eq!(tsv_of(serde_json::json!("text")), "text\n");
        let names = jmespath::compile("[?tier=='low_priority'].name")
            .expect("query")
            .search(clusters)
            .expect("search");
        assert_eq!(
            tsv_of(serde_json::to_value(&*names).expect("json")),
            "gpu\n"
        );
        assert!(set_query("[?").is_err(), "not JMESPath");
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
