//! The Debian package as an operator installs it: `cargo deb -p nakama-edge`, installed with
//! dpkg into a bare Debian 12 root (`mmdebstrap --variant=minbase`), its default config
//! checked by the user the unit runs as, then purged.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

/// `cargo deb` of the binary the tests run (no build of its own), into `dir`.
fn package(dir: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let profile = if edge_bin().to_string_lossy().contains("/release/") {
        "release"
    } else {
        "dev"
    };
    let out = run_ok(
        Command::new(env!("CARGO"))
            .args([
                "deb",
                "-p",
                "nakama-edge",
                "--no-build",
                "--fast",
                "--profile",
                profile,
            ])
            .arg("--output")
            .arg(dir)
            .current_dir(&workspace),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let deb = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb named in cargo deb's output: {text}"));
    PathBuf::from(deb.trim())
}

/// `args` run inside `root`, as `user` when given.
fn inside(root: &Path, user: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("chroot");
    if let Some(user) = user {
        cmd.arg(format!("--userspec={user}:{user}"));
    }
    cmd.arg(root)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    run_ok(&mut cmd)
}

#[test]
fn the_deb_installs_in_a_bare_debian_root_and_its_config_checks() {
    let dir = TempDir::new("deb");
    let deb = package(dir.path());
    let root = dir.path().join("root");
    run_ok(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--quiet", "bookworm"])
            .arg(&root),
    );
    std::fs::copy(&deb, root.join("tmp/nakama-edge.deb")).unwrap();
    inside(&root, None, &["dpkg", "-i", "/tmp/nakama-edge.deb"]);

    // The system user, its state directory, the config readable by it alone.
    let user = stdout_of(inside(&root, None, &["getent", "passwd", "nakama-edge"]));
    assert!(
        user.ends_with(":/var/lib/nakama-edge:/usr/sbin/nologin"),
        "{user}"
    );
    let stat = |path: &str| stdout_of(inside(&root, None, &["stat", "-c", "%U:%G %a", path]));
    assert_eq!(stat("/var/lib/nakama-edge"), "nakama-edge:nakama-edge 700");
    assert_eq!(stat("/etc/nakama-edge/edge.toml"), "root:nakama-edge 640");
    assert!(root.join("usr/lib/nakama-edge/reload").exists());
    assert!(root
        .join("usr/lib/systemd/system/nakama-edge.service")
        .exists());
    let conffiles = stdout_of(inside(
        &root,
        None,
        &["dpkg-query", "-W", "-f=${Conffiles}", "nakama-edge"],
    ));
    assert!(
        conffiles.contains("/etc/nakama-edge/edge.toml"),
        "{conffiles}"
    );

    // The default config passes check, run as the unit runs it.
    inside(
        &root,
        Some("nakama-edge"),
        &[
            "/usr/bin/nakama-edge",
            "check",
            "-c",
            "/etc/nakama-edge/edge.toml",
        ],
    );

    // Purged: the state and the user go with it.
    inside(&root, None, &["dpkg", "--purge", "nakama-edge"]);
    assert!(!root.join("var/lib/nakama-edge").exists());
    assert!(!root.join("usr/bin/nakama-edge").exists());
    let gone = Command::new("chroot")
        .arg(&root)
        .args(["getent", "passwd", "nakama-edge"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the user is still there");
}
