//! Pebble, the ACME test server (Debian package `pebble`), with `pebble-challtestsrv` as its
//! DNS server answering every name with 127.0.0.1, and its validation ports pointed at an
//! edge's listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use super::{eventually, free_port, Edge, Ports, TempDir, TestCerts};

/// A running Pebble.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// The ACME directory URL.
    pub directory: String,
    /// The root that Pebble's own HTTPS certificate chains to (for `acme.directory_ca`).
    pub https_ca: PathBuf,
    certs: TestCerts,
    listen: SocketAddr,
    management: SocketAddr,
    config: PathBuf,
    dns_addr: SocketAddr,
    dns_management: SocketAddr,
    env: Vec<(String, String)>,
    log: PathBuf,
    dir: TempDir,
}

fn require(binary: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{binary} is needed (Debian package `pebble`; .ci/deps installs it)"
    );
}

impl Pebble {
    /// Start Pebble validating challenges on `edge`'s listeners; certificates it issues live
    /// `validity` (Pebble's default, years, when `None`); `env` adds Pebble settings.
    pub fn start(edge: Ports, validity: Option<Duration>, env: &[(&str, &str)]) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        let dir = TempDir::new("pebble");
        let certs = TestCerts::new();
        let (cert, key) = (
            dir.path().join("pebble-cert.pem"),
            dir.path().join("pebble-key.pem"),
        );
        certs.write_leaf(&cert, &key, "pebble");
        let https_ca = dir.path().join("pebble-https-ca.pem");
        std::fs::write(&https_ca, &certs.ca_pem).unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut pebble_config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert,
            "privateKey": key,
            "httpPort": edge.http.port(),
            "tlsPort": edge.https.port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity {
            pebble_config["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        let config = dir.path().join("pebble-config.json");
        std::fs::write(&config, pebble_config.to_string()).unwrap();
        let dns_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns_management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("pebble.log");
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns_addr.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &dns_management.to_string(),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut p = Pebble {
            pebble: Command::new("true").spawn().unwrap(),
            dns,
            directory: format!("https://{listen}/dir"),
            https_ca,
            certs,
            listen,
            management,
            config,
            dns_addr,
            dns_management,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
            dir,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.pebble = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &self.dns_addr.to_string(), "-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
    }

    /// Wait until Pebble answers on its directory.
    pub async fn wait_up(&self) {
        let client = self.client();
        eventually("pebble up", || async {
            client.get(&self.directory).send().await.is_ok()
        })
        .await;
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.certs.ca_pem.as_bytes()).unwrap(),
            )
            .tls_built_in_root_certs(false)
            .build()
            .unwrap()
    }

    /// The root Pebble's issued certificates chain to (new at every start).
    pub async fn issuing_root(&self) -> String {
        let url = format!("https://{}/roots/0", self.management);
        self.client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The `[acme]` section of an edge ordering `domains` from this Pebble through
    /// `challenge`, keeping its state in `state_dir`; retries after 1 s.
    pub fn acme_section(
        &self,
        domains: &[&str],
        challenge: &str,
        state_dir: &std::path::Path,
    ) -> String {
        let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
        format!(
            "[acme]\ndomains = [{}]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@nakama-edge.test\"]\n\
             challenge = \"{challenge}\"\nstate_dir = \"{}\"\ndirectory_ca = \"{}\"\nretry_backoff = \"1s\"\n",
            domains.join(", "),
            self.directory,
            state_dir.display(),
            self.https_ca.display()
        )
    }

    /// Make DNS answer `host` with `ip` only (where the CA then validates its challenges).
    pub async fn set_dns(&self, host: &str, ip: &str) {
        let client = reqwest::Client::new();
        let base = format!("http://{}", self.dns_management);
        let host = format!("{host}.");
        let clear = client
            .post(format!("{base}/clear-a"))
            .json(&serde_json::json!({"host": host}))
            .send()
            .await
            .unwrap();
        assert!(clear.status().is_success());
        let add = client
            .post(format!("{base}/add-a"))
            .json(&serde_json::json!({"host": host, "addresses": [ip]}))
            .send()
            .await
            .unwrap();
        assert!(add.status().is_success());
    }

    /// Orders Pebble has been asked for.
    pub fn orders(&self) -> usize {
        self.log().matches("POST /order-plz").count()
    }

    /// Stop Pebble (its state, accounts included, is in memory and is lost).
    pub fn stop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }

    /// Start it again on the same addresses.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_up().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
        if std::thread::panicking() {
            eprintln!("---- pebble log ----\n{}", self.log());
        }
    }
}

pub fn client_config(root_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(root_pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// The leaf the edge serves for `name`, to a client that trusts only `root_pem`; an error
/// while the placeholder (or a certificate from another CA) is served. Also the ALPN chosen.
pub async fn served_leaf(
    edge: &Edge,
    name: &str,
    root_pem: &str,
) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let tcp = tokio::net::TcpStream::connect(edge.https)
        .await
        .map_err(|e| e.to_string())?;
    let connector =
        tokio_rustls::TlsConnector::from(client_config(root_pem, &[b"h2", b"http/1.1"]));
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tls.get_ref().1;
    Ok((
        conn.peer_certificates().unwrap()[0].to_vec(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    ))
}
