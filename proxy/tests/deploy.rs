//! The deployment files operators start from: the Kubernetes manifests in `deploy/kubernetes`,
//! validated offline against the Kubernetes API's schemas (kubernetes-models: types, required
//! fields, enums and formats; not unknown fields, and nothing is applied to a cluster), and
//! held to what the edge needs of them.

mod support;

use serde_json::Value;
use support::*;

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_manifests_validate_and_their_config_checks() {
    let dir = repo("deploy/kubernetes");
    let out = js::run("validate_k8s.mjs", &[&dir.display().to_string()], &[]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let documents = v["documents"].as_array().unwrap();
    let find = |kind: &str, name: &str| -> &Value {
        &documents
            .iter()
            .find(|d| d["kind"] == kind && d["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {dir:?}"))["object"]
    };

    // The edge's config checks, its secrets where the Secret puts them.
    let config = find("ConfigMap", "nakama-edge")["data"]["edge.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let tmp = TempDir::new("k8s");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let secret = &find("Secret", "nakama-edge")["stringData"];
    for key in ["session-key", "database-password"] {
        std::fs::write(secrets.join(key), secret[key].as_str().unwrap()).unwrap();
    }
    let path = tmp.path().join("edge.toml");
    std::fs::write(
        &path,
        config.replace("/etc/nakama-edge/secrets", &secrets.display().to_string()),
    )
    .unwrap();
    let check = std::process::Command::new(edge_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The Deployment: probes on the admin API, a grace period above the edge's, the config
    // mounted as a directory (a subPath mount never sees an update), no privileges.
    let deployment = find("Deployment", "nakama-edge");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(config.contains("grace_period = \"30s\""));
    assert!(
        grace > 30 + pre_stop,
        "{grace} s leaves the edge no time to drain"
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().all(|m| m.get("subPath").is_none()));
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // Players reach it on 443 and 80, their addresses kept; one edge at a time may go.
    let service = find("Service", "nakama-edge");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        find("PodDisruptionBudget", "nakama-edge")["spec"]["minAvailable"],
        1
    );
    // The headless Service [[discover]] reads.
    assert_eq!(find("Service", "nakama")["spec"]["clusterIP"], "None");
    assert!(config.contains("dns = \"nakama.game.svc.cluster.local.\""));
}
