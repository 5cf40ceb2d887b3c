//! Test-only: Azure's own Python SDK as the oracle for the YAML readers.
//! Runs a script of `tests/oracle` over every `.yml` of a corpus folder in
//! `tests/` with the azure-ai-ml that `cargo xtask setup` installs in
//! .data/venv; each answer is a JSON object with `file`, `ok` and either
//! `values` or `error`.

use std::path::{Path, PathBuf};

/// Each corpus file's name, path and the SDK's answer, in name order.
pub fn answers(script: &str, corpus: &str) -> Vec<(String, PathBuf, serde_json::Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("tests").join(corpus))
        .expect("the corpus")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    let out = std::process::Command::new(root.join(".data/venv/bin/python"))
        .arg(root.join("tests/oracle").join(script))
        .args(&files)
        .output()
        .expect("the test Python: run `cargo xtask setup`");
    assert!(
        out.status.success(),
        "azure-ai-ml is missing from .data/venv: run `cargo xtask setup`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<(String, PathBuf, serde_json::Value)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let azure: serde_json::Value = serde_json::from_str(line).expect("an oracle line");
            let path = PathBuf::from(azure["file"].as_str().expect("file"));
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, path, azure)
        })
        .collect();
    assert_eq!(answers.len(), files.len(), "one oracle answer per file");
    answers
}

/// Fails the corpus test for a file where Strato and the SDK disagree,
/// saying what each did (the SDK's error, cut to its first lines).
pub fn disagree<T, E: std::fmt::Display>(
    name: &str,
    azure: &serde_json::Value,
    strato: &Result<T, E>,
) -> ! {
    let said = azure["error"]
        .as_str()
        .unwrap_or("as the service would not")
        .lines()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ");
    panic!(
        "{name}: azure-ai-ml {} it ({}), Strato {}",
        if azure["ok"].as_bool() == Some(true) {
            "accepts"
        } else {
            "refuses"
        },
        said.chars().take(300).collect::<String>(),
        match strato {
            Ok(_) => "accepts it".to_owned(),
            Err(e) => format!("refuses it: {e:#}"),
        }
    )
}
