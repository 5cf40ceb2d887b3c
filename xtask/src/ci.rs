//! `cargo xtask ci`: setup, then format check, clippy, build, and every test
//! tier, and a check that the tests left no `strato-*` container or network
//! and no `strato-agent` process behind.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};

use crate::command::run;
use crate::leftovers::{Snapshot, remove_new_since};
use crate::setup::setup;
use crate::workspace::cargo;

pub(crate) fn ci() -> anyhow::Result<()> {
    let started = Instant::now();
    setup()?;
    // A clean checkout builds once: incremental state would only take disk
    // (gigabytes) that the tests' images need.
    let cargo = || {
        let mut c = cargo();
        if std::env::var_os("CI").is_some() {
            c.env("CARGO_INCREMENTAL", "0");
        }
        c
    };
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run("cargo fmt --check", fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run("cargo clippy -D warnings", clippy)?;
    // The end-to-end tests start these binaries.
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    run("cargo build --bins", build)?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-targets"]);
    report_free_disk();
    let before = Snapshot::take().context("leftover check before the tests")?;
    let tests = run_tests("cargo test (unit, property, integration, end-to-end)", test);
    let (passed, failed) = match (tests, remove_new_since(&before)) {
        (Ok(counts), Ok(())) => counts,
        (Ok(_), Err(left)) => return Err(left),
        (Err(tests), Ok(())) => return Err(tests),
        (Err(tests), Err(left)) => bail!("{tests:#}; and {left:#}"),
    };
    println!("ci: all green in {:.0}s", started.elapsed().as_secs_f64());
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Prints the free space where the build and Docker's images live: the
/// end-to-end tests load images into machines (about 2 GB at once), and a
/// full disk fails them with an error far from its cause.
fn report_free_disk() {
    let target = crate::workspace::target_dir();
    let df = Command::new("df")
        .args(["-h", "--output=target,avail"])
        .arg(&target)
        .arg("/var/lib/docker")
        .output();
    if let Ok(out) = df {
        println!(
            "==> free disk\n{}",
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
    }
}

/// Runs `cargo test`, echoing its output, and adds up its `test result:`
/// lines so the run ends with one summary line.
fn run_tests(what: &str, mut cmd: Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let started = Instant::now();
    println!("==> {what}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: cannot start"))?;
    let stdout = child.stdout.take().context("test output")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, "passed");
            failed += count(rest, "failed");
        }
    }
    let status = child.wait()?;
    ensure!(
        status.success(),
        "{what}: failed ({status}); {passed} passed, {failed} failed"
    );
    ensure!(passed > 0, "{what}: no test ran");
    println!("    {what}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok((passed, failed))
}

/// The number before `word` in `ok. 7 passed; 0 failed; ...`.
fn count(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .filter_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)
        })
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}
