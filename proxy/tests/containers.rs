//! The edge as a container, as an operator runs it: the image `deploy/container/build.sh`
//! makes (small, not root, configured by a mounted file, a HEALTHCHECK, SIGTERM drains and
//! exits 0), and `deploy/compose/compose.yaml` bringing up Nakama, PostgreSQL and two edges
//! that carry a nakama-js player. Podman here; skipped (with a message) where it is missing.

mod support;

use std::process::Command;

use support::containers::{podman, workspace, Podman};
use support::*;

/// The ERROR lines of an edge's log, text or JSON.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("\"level\":\"ERROR\""))
        .collect()
}

/// A container (and its volumes) removed however the test ends.
struct Removed<'a> {
    podman: &'a Podman,
    container: String,
    volumes: Vec<String>,
}

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .try_run(&["rm", "-f", "-t", "0", &self.container]);
        for v in &self.volumes {
            let _ = self.podman.try_run(&["volume", "rm", "-f", v]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_is_small_runs_as_its_own_user_in_front_of_a_node_and_drains_on_stop() {
    let Some(podman) = podman() else { return };
    let image = tokio::task::block_in_place(|| podman.edge_image());

    // Both tags, one image, at most 40 MB, not root, a health check on /readyz.
    let id = podman.run(&["image", "inspect", "--format", "{{.Id}}", &image]);
    assert_eq!(
        podman.run(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            "nakama-edge:latest"
        ]),
        id
    );
    let size: u64 = podman
        .run(&["image", "inspect", "--format", "{{.Size}}", &image])
        .parse()
        .unwrap();
    assert!(size <= 40_000_000, "the image is {size} bytes");
    assert_eq!(
        podman.run(&["image", "inspect", "--format", "{{.Config.User}}", &image]),
        "65532:65532"
    );

    // Its config mounted, the root file system read-only, no capability: in front of a node
    // (on the host's loopback, so the host's network).
    let node = StandIn::start("a");
    let ports = Ports::free();
    let conf = TempDir::new("image-conf");
    std::fs::write(
        conf.path().join("edge.toml"),
        format!(
            "[server]\ngrace_period = \"30s\"\nstate_dir = \"/var/lib/nakama-edge\"\n\n\
             [listeners]\nhttps = \"{}\"\nhttp = \"{}\"\nadmin = \"{}\"\n\n{}",
            ports.https,
            ports.http,
            ports.admin,
            node.toml()
        ),
    )
    .unwrap();
    let name = format!("nakama-edge-test-{}", std::process::id());
    let volume = format!("{name}-state");
    let _removed = Removed {
        podman,
        container: name.clone(),
        volumes: vec![volume.clone()],
    };
    podman.run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &format!("{}:/etc/nakama-edge:ro", conf.path().display()),
        "-v",
        &format!("{volume}:/var/lib/nakama-edge"),
        &image,
    ]);

    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let admin = format!("http://{}", ports.admin);
    eventually("the container's edge is ready", || async {
        client
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // The image's own health check says so too.
    let health = podman.try_run(&["healthcheck", "run", &name]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stdout)
    );
    let r = client
        .get(format!("https://{}/healthcheck", ports.https))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The process is the image's user, not root.
    let pid = podman.run(&["inspect", "--format", "{{.State.Pid}}", &name]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|id| id == "65532"),
        "{uid}"
    );

    // The state volume is the user's: a drain is kept in it.
    let drained = client
        .post(format!("{admin}/nodes/a/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let state = podman.run(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume]);
    let drains = std::fs::read_to_string(format!("{state}/drains.json")).unwrap();
    assert!(drains.contains("\"a\""), "{drains}");
    assert_eq!(
        client
            .post(format!("{admin}/nodes/a/undrain"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // `podman stop` (SIGTERM) while a call is in flight: the call is answered, the container
    // exits 0.
    let slow = tokio::spawn(
        client
            .post(format!(
                "https://{}/v2/rpc/slow?ms=1500&http_key=defaulthttpkey",
                ports.https
            ))
            .body("\"\"")
            .send(),
    );
    eventually("the call reaches the node", || async {
        let Ok(r) = client.get(format!("{admin}/nodes")).send().await else {
            return false;
        };
        let nodes: serde_json::Value = r.json().await.unwrap_or_default();
        nodes[0]["http_in_flight"].as_u64().unwrap_or(0) > 0
    })
    .await;
    tokio::task::block_in_place(|| podman.run(&["stop", "-t", "40", &name]));
    let answered = slow.await.unwrap().unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(
        podman.run(&["inspect", "--format", "{{.State.ExitCode}}", &name]),
        "0"
    );
    let log = podman.try_run(&["logs", &name]);
    let log =
        String::from_utf8_lossy(&log.stderr).to_string() + &String::from_utf8_lossy(&log.stdout);
    assert_eq!(error_lines(&log), Vec::<&str>::new(), "{log}");
}

/// A compose project taken down (containers, network, volumes) however the test ends.
struct Project<'a> {
    podman: &'a Podman,
    name: String,
    dir: TempDir,
}

impl Project<'_> {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        self.podman
            .command("podman-compose")
            .args(["-p", &self.name, "-f", "compose.yaml"])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("podman-compose: {e} (.ci/deps installs it)"))
    }

    /// The container of a compose service.
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "5"]);
        let network = format!("{}_default", self.name);
        let _ = self.podman.try_run(&["network", "rm", "-f", &network]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_runs_nakama_behind_two_edges_that_carry_a_nakama_js_player() {
    let Some(podman) = podman() else { return };
    let Some(nakama) = support::nakama::bin() else {
        return;
    };
    let (edge_image, nakama_image, postgres_image) = tokio::task::block_in_place(|| {
        (
            podman.edge_image(),
            podman.nakama_image(&nakama),
            podman.postgres_image(),
        )
    });

    // What an operator does: a copy of deploy/compose, its secrets made, a module added.
    let dir = TempDir::new("compose");
    let from = workspace().join("deploy/compose");
    for file in ["compose.yaml", "make-secrets.sh", "edge/edge.toml"] {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from.join(file), to).unwrap();
    }
    let made = Command::new(dir.path().join("make-secrets.sh"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::create_dir_all(dir.path().join("modules")).unwrap();
    std::fs::copy(
        workspace().join("proxy/tests/nakama/edge_test.js"),
        dir.path().join("modules/edge_test.js"),
    )
    .unwrap();

    let (https_1, http_1, https_2) = (free_port(), free_port(), free_port());
    let project = Project {
        podman,
        name: format!("nakama-edge-test-{}", std::process::id()),
        dir,
    };
    let up = project
        .podman
        .command("podman-compose")
        .args(["-p", &project.name, "-f", "compose.yaml", "up", "-d"])
        .current_dir(project.dir.path())
        .envs([
            ("EDGE_IMAGE", edge_image),
            ("NAKAMA_IMAGE", nakama_image),
            ("POSTGRES_IMAGE", postgres_image),
            ("EDGE_1_HTTPS", format!("127.0.0.1:{https_1}")),
            ("EDGE_1_HTTP", format!("127.0.0.1:{http_1}")),
            ("EDGE_2_HTTPS", format!("127.0.0.1:{https_2}")),
            (
                "NAKAMA_ARGS",
                "--runtime.js_entrypoint edge_test.js".to_string(),
            ),
        ])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "podman-compose up:\n{}\n{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let logs = |service: &str| {
        let out = podman.try_run(&["logs", &project.container(service)]);
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };

    // Both edges answer players once Nakama is up (the database made, the schema migrated).
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for port in [https_1, https_2] {
        let client = &client;
        eventually_within(
            &format!("Nakama behind the edge on {port}"),
            std::time::Duration::from_secs(120),
            || async move {
                client
                    .get(format!("https://127.0.0.1:{port}/healthcheck"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
    }
    let redirect = client
        .get(format!("http://127.0.0.1:{http_1}/healthcheck"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);

    // nakama-js players: a login and a socket through edge-1, an RPC on the socket, the
    // socket again through edge-2, a session refresh.
    let out = js::run(
        "two_edges.mjs",
        &["3"],
        &[
            ("EDGE_A", "127.0.0.1".to_string()),
            ("EDGE_A_PORT", https_1.to_string()),
            ("EDGE_B", "127.0.0.1".to_string()),
            ("EDGE_B_PORT", https_2.to_string()),
            // The edges' certificate is self-signed (no [acme] in the compose config).
            ("NODE_TLS_REJECT_UNAUTHORIZED", "0".to_string()),
        ],
    )
    .await;
    let used = js::players_kept_their_node(&out.stdout, 3, 3);
    assert_eq!(used.into_iter().collect::<Vec<_>>(), ["nakama1"]);

    // The edges are one cluster: a drain made through edge-1 takes edge-2's only node out
    // of rotation (edge-2 is then not ready), and the undrain puts it back.
    let nakama_ip = podman.run(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &project.container("nakama"),
    ]);
    let node = format!("nakama-{nakama_ip}:7350");
    let edge = |which: &str, args: &[&str]| {
        podman.try_run(&[&["exec", &project.container(which), "nakama-edge"], args].concat())
    };
    let drained = edge("edge-1", &["drain", &node]);
    assert!(drained.status.success(), "{drained:?}\n{}", logs("edge-1"));
    eventually("edge-2 sees the drain", || async {
        !edge("edge-2", &["ready", "-c", "/etc/nakama-edge/edge.toml"])
            .status
            .success()
    })
    .await;
    assert!(edge("edge-1", &["undrain", &node]).status.success());
    eventually("edge-2 sees the undrain", || async {
        edge("edge-2", &["ready", "-c", "/etc/nakama-edge/edge.toml"])
            .status
            .success()
    })
    .await;

    // Nakama took its keys and console password from the secrets (it warns of each default
    // it runs with; the socket server key is the clients' to know, not a secret).
    let nakama_log = logs("nakama");
    for param in [
        "session.encryption_key",
        "session.refresh_encryption_key",
        "console.password",
        "console.signing_key",
    ] {
        assert!(
            !nakama_log.contains(&format!("\"param\":\"{param}\"")),
            "Nakama runs with the default {param}"
        );
    }
    assert!(nakama_log.contains("\"param\":\"socket.server_key\""));

    // Nothing publishes Nakama's ports (the console stays sealed), and neither edge logged
    // an ERROR.
    assert_eq!(podman.run(&["port", &project.container("nakama")]), "");
    for e in ["edge-1", "edge-2"] {
        let log = logs(e);
        assert_eq!(error_lines(&log), Vec::<&str>::new(), "{e}:\n{log}");
    }
}
