//! What a code folder's `.amlignore` (else its `.gitignore`) leaves out of
//! an upload, as Azure ML reads them: gitignore's rules, read from the
//! folder's root. Supported: comments, `!` to take a path back, a trailing
//! `/` for folders only, a `/` inside a pattern anchoring it at the root
//! (else it matches a name at any depth), `*` and `?` within a name, `**`
//! across folders. Not supported: `[...]` classes (matched literally) and
//! ignore files in subfolders.

use std::path::Path;

/// The longest ignore file read, and the most patterns kept.
pub const MAX_IGNORE_BYTES: u64 = 64 * 1024;
pub const MAX_IGNORE_RULES: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: String,
    negate: bool,
    folders_only: bool,
    anchored: bool,
}

/// The rules of one ignore file; empty when the folder has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    rules: Vec<Rule>,
    /// The file they came from, for messages.
    pub source: Option<String>,
}

impl Ignore {
    /// The rules of `.amlignore`, else `.gitignore`, at the root of `folder`.
    pub fn of_folder(folder: &Path) -> Result<Ignore, String> {
        for name in [".amlignore", ".gitignore"] {
            let path = folder.join(name);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.len() > MAX_IGNORE_BYTES {
                return Err(format!(
                    "{}: {} bytes; an ignore file is read up to {MAX_IGNORE_BYTES}",
                    path.display(),
                    meta.len()
                ));
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut ignore = Ignore::parse(&text)?;
            ignore.source = Some(name.to_owned());
            return Ok(ignore);
        }
        Ok(Ignore::default())
    }

    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, line) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line.strip_prefix('\\').unwrap_or(line)),
            };
            let (folders_only, line) = match line.strip_suffix('/') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let anchored = line.contains('/');
            let pattern = line.strip_prefix('/').unwrap_or(line).to_owned();
            if pattern.is_empty() {
                continue;
            }
            rules.push(Rule {
                pattern,
                negate,
                folders_only,
                anchored,
            });
            if rules.len() > MAX_IGNORE_RULES {
                return Err(format!(
                    "an ignore file holds at most {MAX_IGNORE_RULES} patterns"
                ));
            }
        }
        Ok(Ignore {
            rules,
            source: None,
        })
    }

    /// Whether `relative` (`/`-separated, below the root) is left out. The
    /// last rule that matches decides. A folder left out leaves out all it
    /// holds: the caller does not walk into it.
    pub fn ignores(&self, relative: &str, folder: bool) -> bool {
        let name = relative.rsplit('/').next().unwrap_or(relative);
        let mut ignored = false;
        for rule in &self.rules {
            if rule.folders_only && !folder {
                continue;
            }
            let subject = if rule.anchored { relative } else { name };
            if glob(rule.pattern.as_bytes(), subject.as_bytes()) {
                ignored = !rule.negate;
            }
        }
        ignored
    }
}

/// gitignore's wildcards: `*` and `?` within a name, `**` across names
/// (`**/` also matching no folder at all).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            if let Some(after) = rest.strip_prefix(b"/")
                && glob(after, s)
            {
                return true;
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => s.first().is_some_and(|c| *c != b'/') && glob(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_rules_as_azure_ml_reads_them() {
        let ignore = Ignore::parse(
            "# build outputs\n\
             *.pyc\n\
             __pycache__/\n\
             /data\n\
             logs/**/*.txt\n\
             **/secrets\n\
             *.log\n\
             !keep.log\n\
             \n\
             docs/*.md\n",
        )
        .expect("parses");
        for (path, folder, left_out) in [
            ("a.pyc", false, true),
            ("src/deep/b.pyc", false, true),
            ("src/__pycache__", true, true),
            ("src/__pycache__", false, false),
            ("data", true, true),
            ("src/data", true, false),
            ("logs/a.txt", false, true),
            ("logs/x/y/a.txt", false, true),
            ("secrets", false, true),
            ("a/b/secrets", true, true),
            ("run.log", false, true),
            ("keep.log", false, false),
            ("docs/readme.md", false, true),
            ("docs/api/readme.md", false, false),
            ("train.py", false, false),
        ] {
            assert_eq!(ignore.ignores(path, folder), left_out, "{path}");
        }
    }

    #[test]
    fn ignore_files_are_bounded() {
        let many = "a\n".repeat(MAX_IGNORE_RULES + 1);
        assert!(Ignore::parse(&many).is_err());
        assert!(Ignore::parse("").expect("empty").rules.is_empty());
    }
}
