//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! one HELP and TYPE line per family under the sample's own name, so that
//! `promtool check metrics` finds help for every counter.

use std::fmt::Write as _;

#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// A sample's labels, in order.
pub type Labels<'a> = Vec<(&'a str, String)>;

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// HELP text escapes backslash and newline.
fn help_text(help: &str) -> String {
    help.replace('\\', r"\\").replace('\n', r"\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// Adds a family; `kind` is `gauge` or `counter` (whose name ends in
    /// `_total`). A family without samples is left out.
    pub fn family<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
    ) {
        let samples: Vec<(Labels<'a>, f64)> = samples.into_iter().collect();
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "# HELP {name} {}", help_text(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.out, "{name} {}", number(value));
            } else {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = writeln!(self.out, "{name}{{{}}} {}", l.join(","), number(value));
            }
        }
    }

    /// A histogram family: per label set, cumulative bucket counts for the
    /// upper bounds `bounds`, the sum and the count.
    pub fn histogram<'a>(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        series: impl IntoIterator<Item = (Labels<'a>, Vec<u64>, f64, u64)>,
    ) {
        let series: Vec<_> = series.into_iter().collect();
        if series.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "# HELP {name} {}", help_text(help));
        let _ = writeln!(self.out, "# TYPE {name} histogram");
        for (labels, buckets, sum, count) in series {
            let base: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let with = |extra: Option<String>| {
                let mut all = base.clone();
                all.extend(extra);
                if all.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", all.join(","))
                }
            };
            for (bound, n) in bounds.iter().zip(&buckets) {
                let _ = writeln!(
                    self.out,
                    "{name}_bucket{} {n}",
                    with(Some(format!("le=\"{}\"", number(*bound))))
                );
            }
            let _ = writeln!(
                self.out,
                "{name}_bucket{} {count}",
                with(Some("le=\"+Inf\"".to_owned()))
            );
            let _ = writeln!(self.out, "{name}_sum{} {}", with(None), number(sum));
            let _ = writeln!(self.out, "{name}_count{} {count}", with(None));
        }
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: &str, value: f64) {
        self.family(name, help, kind, [(Vec::new(), value)]);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// The content type of this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_and_escaped_labels() {
        let mut e = Exposition::default();
        e.family(
            "x_total",
            "Things.",
            "counter",
            [(vec![("a", "q\"\\".to_owned())], 2.0)],
        );
        e.single("y", "Y.", "gauge", 1.5);
        e.family("empty", "Never.", "gauge", Vec::new());
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\"} 2\n# HELP y Y.\n# TYPE y gauge\ny 1.5\n"
        );
    }
}
