//! Containers for the deployment tests (`tests/containers.rs`): podman with what this kind of
//! machine needs, the edge's image as `deploy/container/build.sh` makes it, and the images
//! the compose test runs in place of the official Nakama and PostgreSQL ones (no registry is
//! reachable here): Nakama from `NAKAMA_BIN`, PostgreSQL from Debian's package.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Podman, or `None` (with a message) where it is not installed.
pub fn podman() -> Option<&'static Podman> {
    static PODMAN: OnceLock<Option<Podman>> = OnceLock::new();
    PODMAN
        .get_or_init(|| {
            if Command::new("podman").arg("--version").output().is_err() {
                eprintln!("skipped: no podman (.ci/deps installs it)");
                return None;
            }
            Some(Podman { conf: conf() })
        })
        .as_ref()
}

/// `CONTAINERS_CONF` for every podman command: the caller's, else one for a sandbox that
/// refuses rlimit changes and has no systemd (no default ulimits, no pids limit,
/// cgroupfs, runc).
fn conf() -> Option<PathBuf> {
    if std::env::var_os("CONTAINERS_CONF").is_some() {
        return None;
    }
    let path = std::env::temp_dir().join("nakama-edge-tests-containers.conf");
    let runtime = if Command::new("runc").arg("--version").output().is_ok() {
        "runtime = \"runc\"\n"
    } else {
        ""
    };
    super::write_atomically(
        &path,
        &format!(
            "[containers]\ndefault_ulimits = []\npids_limit = 0\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n{runtime}"
        ),
    );
    Some(path)
}

pub struct Podman {
    conf: Option<PathBuf>,
}

impl Podman {
    /// `program` (podman, podman-compose) with this machine's settings.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if let Some(conf) = &self.conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        cmd
    }

    /// `podman args`, which must succeed: its stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> String {
        let mut cmd = self.command("podman");
        cmd.args(args);
        super::stdout_of(super::run_ok(&mut cmd))
    }

    /// `podman args`, whatever comes of it.
    pub fn try_run(&self, args: &[&str]) -> Output {
        self.command("podman")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    }

    /// The edge's image, `nakama-edge:<version>`, built once per test run by
    /// `deploy/container/build.sh` from `NAKAMA_EDGE_BIN` when that is set, else from
    /// `cargo build --release` (`PGO=0`: the profile-guided build that ships by default lays
    /// out the same code, and would add a quarter of an hour or more to CI).
    pub fn edge_image(&self) -> String {
        static BUILT: OnceLock<()> = OnceLock::new();
        BUILT.get_or_init(|| {
            let mut cmd = self.command(
                &workspace()
                    .join("deploy/container/build.sh")
                    .to_string_lossy(),
            );
            match std::env::var_os("NAKAMA_EDGE_BIN") {
                Some(bin) => cmd.env("NAKAMA_EDGE_BINARY", bin),
                None => cmd.env("PGO", "0"),
            };
            super::run_ok(&mut cmd);
        });
        format!("nakama-edge:{}", env!("CARGO_PKG_VERSION"))
    }

    /// An image laid out as Nakama's official one, holding `nakama` (a static binary).
    pub fn nakama_image(&self, nakama: &Path) -> String {
        let tag = "localhost/nakama-edge-test-nakama:latest".to_string();
        let dir = super::TempDir::new("nakama-image");
        for (from, to) in [
            (nakama, "nakama"),
            (Path::new("/bin/busybox"), "busybox"),
            (
                Path::new("/etc/ssl/certs/ca-certificates.crt"),
                "ca-certificates.crt",
            ),
            (&here().join("nakama.Containerfile"), "Containerfile"),
        ] {
            std::fs::copy(from, dir.path().join(to)).unwrap_or_else(|e| {
                panic!("{}: {e} (.ci/deps installs busybox-static)", from.display())
            });
        }
        self.run(&[
            "build",
            "--quiet",
            "-t",
            &tag,
            &dir.path().to_string_lossy(),
        ]);
        tag
    }

    /// A PostgreSQL 15 image from Debian's package in a bare root (`mmdebstrap`), with an
    /// entrypoint speaking the official image's environment. Kept between runs, named by the
    /// entrypoint's contents.
    pub fn postgres_image(&self) -> String {
        let entrypoint = here().join("postgres-entrypoint.sh");
        let script = std::fs::read(&entrypoint).unwrap();
        let tag = format!(
            "localhost/nakama-edge-test-postgres:{:016x}",
            fnv1a(&script)
        );
        if self.try_run(&["image", "exists", &tag]).status.success() {
            return tag;
        }
        let dir = super::TempDir::new("postgres-image");
        let tar = dir.path().join("postgres.tar");
        super::run_ok(
            Command::new("mmdebstrap")
                .args(["--variant=minbase", "--quiet", "--include=postgresql-15"])
                .arg(format!(
                    "--customize-hook=copy-in {} /usr/local/bin",
                    entrypoint.display()
                ))
                .arg("--customize-hook=chroot \"$1\" install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data")
                .arg("bookworm")
                .arg(&tar),
        );
        self.run(&[
            "import",
            "--quiet",
            "--change",
            "USER postgres",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "--change",
            "STOPSIGNAL SIGINT",
            "--change",
            "ENTRYPOINT [\"/usr/local/bin/postgres-entrypoint.sh\"]",
            &tar.to_string_lossy(),
            &tag,
        ]);
        tag
    }
}

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containers")
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
