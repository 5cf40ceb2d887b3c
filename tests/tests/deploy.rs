//! The systemd units in `deploy/systemd/` as an operator installs them:
//! `systemd-analyze verify` finds nothing wrong (with ExecStart pointing at
//! the binaries this build made), and `systemd-analyze security` rates
//! their exposure low. Their hardening is checked here statically; a
//! machine booting systemd runs them for real in the fleet tests.

use std::path::Path;
use std::process::Command;

/// The unit `name` from deploy/systemd, its ExecStart pointed at this
/// build's binary, written into `dir`.
fn installed(dir: &Path, name: &str, binary: &str) -> std::path::PathBuf {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(name);
    let text = std::fs::read_to_string(&unit).expect("the unit");
    let from = format!("ExecStart=/usr/local/bin/{binary}");
    assert!(
        text.contains(&from),
        "{name} starts /usr/local/bin/{binary}"
    );
    let to = format!("ExecStart={}", strato_e2e::binary(binary).display());
    let path = dir.join(name);
    std::fs::write(&path, text.replace(&from, &to)).expect("write the unit");
    path
}

fn analyze(args: &[&str], unit: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect(
            "systemd-analyze is missing: run `cargo xtask setup` (it installs Debian's systemd)",
        )
}

/// The overall exposure `systemd-analyze security` gives (0 to 10).
fn exposure(unit: &Path) -> f64 {
    let out = analyze(&["security", "--offline=true", "--no-pager"], unit);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, binary, most) in [
        ("strato-control.service", "strato-control", 2.0),
        // Root, driving Docker and reading GPU devices: less can be closed.
        ("strato-agent.service", "strato-agent", 3.5),
    ] {
        let unit = installed(dir.path(), name, binary);
        let out = analyze(&["verify", "--man=no"], &unit);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
        let level = exposure(&unit);
        assert!(level <= most, "{name}: exposure {level} above {most}");
        let text = std::fs::read_to_string(&unit).expect("unit");
        for needed in [
            "NoNewPrivileges=true",
            "ProtectSystem=strict",
            "StateDirectoryMode=0700",
            "Restart=on-failure",
            "RestartPreventExitStatus=2",
        ] {
            assert!(text.contains(needed), "{name} lacks {needed}");
        }
    }
    // The agent reads its join token from a file, never from its unit.
    let agent = std::fs::read_to_string(dir.path().join("strato-agent.service")).expect("unit");
    assert!(agent.contains("STRATO_JOIN_TOKEN_FILE=") && !agent.contains("STRATO_JOIN_TOKEN="));
    assert!(agent.contains("Requires=docker.service"));
}
