//! The shared state against a real PostgreSQL (a throwaway cluster per test).

#[path = "../../proxy/tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nakama_edge_cluster::challenges::Answer;
use nakama_edge_cluster::edges::{Heartbeat, NodeCounts};
use nakama_edge_cluster::{schema, topic, Database, Settings};
use postgres::Postgres;

fn database(pg: &Postgres) -> Database {
    Database::new(&Settings {
        url: pg.url(),
        password_file: None,
        ca: None,
    })
    .unwrap()
}

async fn ready(pg: &Postgres) -> Database {
    let db = database(pg);
    schema::migrate(&db).await.unwrap();
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_edges_migrating_at_once_all_succeed_and_agree() {
    let pg = Postgres::start();
    let dbs: Vec<Arc<Database>> = (0..8).map(|_| Arc::new(database(&pg))).collect();
    let runs = dbs.iter().map(|db| {
        let db = db.clone();
        tokio::spawn(async move { schema::migrate(&db).await })
    });
    for run in futures_join(runs).await {
        run.unwrap();
    }
    let versions = dbs[0].versions().await.unwrap();
    for t in [topic::DRAINS, topic::CERTIFICATES, topic::CHALLENGES] {
        assert_eq!(versions.get(t), Some(&0), "{t}");
    }
    assert_eq!(
        pg.psql("SELECT COUNT(*) FROM nakama_edge_schema"),
        schema::VERSION.to_string()
    );
    // And again: nothing to do.
    schema::migrate(&dbs[3]).await.unwrap();
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn drains_are_shared_and_bump_their_version() {
    let pg = Postgres::start();
    let (a, b) = (ready(&pg).await, ready(&pg).await);
    assert!(a.set_drain("nakama-2", true, "edge-a").await.unwrap());
    assert!(
        !a.set_drain("nakama-2", true, "edge-a").await.unwrap(),
        "already"
    );
    assert!(b.drains().await.unwrap().contains("nakama-2"));
    assert_eq!(b.versions().await.unwrap()[topic::DRAINS], 1);
    assert!(b.set_drain("nakama-2", false, "edge-b").await.unwrap());
    assert!(a.drains().await.unwrap().is_empty());
    assert_eq!(a.versions().await.unwrap()[topic::DRAINS], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_has_one_holder_until_it_lapses() {
    let pg = Postgres::start();
    let (a, b) = (ready(&pg).await, ready(&pg).await);
    let ttl = Duration::from_millis(800);
    let held = a.acquire("acme/x", "edge-a", ttl).await.unwrap().unwrap();
    assert!(b.acquire("acme/x", "edge-b", ttl).await.unwrap().is_none());
    assert!(a.renew(&held, ttl).await.unwrap());
    assert_eq!(
        b.lease_holder("acme/x").await.unwrap().as_deref(),
        Some("edge-a")
    );
    // The holder stops renewing (it died): the lease lapses, and b takes it over.
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        if let Some(l) = b.acquire("acme/x", "edge-b", ttl).await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!a.renew(&held, ttl).await.unwrap(), "a lost it");
    a.release(&held).await.unwrap();
    assert_eq!(
        a.lease_holder("acme/x").await.unwrap().as_deref(),
        Some("edge-b"),
        "a stale release leaves b's lease alone"
    );
    b.release(&taken).await.unwrap();
    assert!(a.lease_holder("acme/x").await.unwrap().is_none());
    // Ten edges at once: exactly one gets it.
    let pg_dbs: Vec<Arc<Database>> = (0..10).map(|_| Arc::new(database(&pg))).collect();
    let tries = pg_dbs.iter().enumerate().map(|(i, db)| {
        let db = db.clone();
        tokio::spawn(async move {
            db.acquire("acme/y", &format!("edge-{i}"), Duration::from_secs(30))
                .await
                .unwrap()
                .is_some()
        })
    });
    let won = futures_join(tries).await.into_iter().filter(|w| *w).count();
    assert_eq!(won, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_account_stored_wins_and_certificates_replace_and_bump() {
    let pg = Postgres::start();
    let (a, b) = (ready(&pg).await, ready(&pg).await);
    let dir = "https://ca.example/dir";
    assert_eq!(a.acme_account(dir).await.unwrap(), None);
    assert_eq!(
        a.save_acme_account(dir, "{\"a\":1}", "edge-a")
            .await
            .unwrap(),
        "{\"a\":1}"
    );
    assert_eq!(
        b.save_acme_account(dir, "{\"b\":2}", "edge-b")
            .await
            .unwrap(),
        "{\"a\":1}",
        "b uses a's account"
    );
    b.forget_acme_account(dir).await.unwrap();
    assert_eq!(a.acme_account(dir).await.unwrap(), None);

    let set = nakama_edge_cluster::certificates::domain_set(&[
        "B.example".to_string(),
        "a.example".to_string(),
        "a.example".to_string(),
    ]);
    assert_eq!(set, "a.example,b.example");
    let cert = nakama_edge_cluster::certificates::SharedCertificate {
        chain_pem: "chain-1".into(),
        key_pem: "key-1".into(),
        updated_by: "edge-a".into(),
    };
    a.save_certificate(&set, &cert, 1_900_000_000)
        .await
        .unwrap();
    assert_eq!(b.certificate(&set).await.unwrap(), Some(cert.clone()));
    let newer = nakama_edge_cluster::certificates::SharedCertificate {
        chain_pem: "chain-2".into(),
        ..cert
    };
    b.save_certificate(&set, &newer, 1_900_000_100)
        .await
        .unwrap();
    assert_eq!(a.certificate(&set).await.unwrap(), Some(newer));
    assert_eq!(a.versions().await.unwrap()[topic::CERTIFICATES], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn challenges_are_published_withdrawn_and_expire() {
    let pg = Postgres::start();
    let (a, b) = (ready(&pg).await, ready(&pg).await);
    let answers = vec![
        Answer {
            kind: "http-01".into(),
            key: "token-1".into(),
            answer: "token-1.thumb".into(),
        },
        Answer {
            kind: "tls-alpn-01".into(),
            key: "play.example".into(),
            answer: "ab12".into(),
        },
    ];
    let seq = a
        .publish_challenges(&answers, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(b.versions().await.unwrap()[topic::CHALLENGES], seq);
    let mut seen = b.challenges().await.unwrap();
    seen.sort_by(|x, y| x.kind.cmp(&y.kind));
    assert_eq!(seen, answers);
    a.withdraw_challenges(&answers).await.unwrap();
    assert!(b.challenges().await.unwrap().is_empty());
    // Expired answers are not given.
    a.publish_challenges(&answers[..1], Duration::from_millis(300))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.challenges().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_list_live_edges_until_they_expire_or_say_farewell() {
    let pg = Postgres::start();
    let (a, b) = (ready(&pg).await, ready(&pg).await);
    let beat = |name: &str| Heartbeat {
        name: name.into(),
        version: "0.1.0".into(),
        routing_digest: "d1".into(),
        nodes: BTreeMap::from([(
            "nakama-1".to_string(),
            NodeCounts {
                http_in_flight: 2,
                websockets: 7,
            },
        )]),
        challenges_seen: 3,
    };
    a.heartbeat(&beat("edge-a"), Duration::from_secs(30))
        .await
        .unwrap();
    b.heartbeat(&beat("edge-b"), Duration::from_millis(300))
        .await
        .unwrap();
    let live = a.live_edges().await.unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].heartbeat, beat("edge-a"));
    assert!(live[0].last_seen > 1_700_000_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.live_edges().await.unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "edge-b never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.farewell("edge-a").await.unwrap();
    assert!(b.live_edges().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_database_fails_fast_and_a_restarted_one_is_reconnected() {
    let pg = Postgres::start();
    let db = ready(&pg).await;
    db.set_drain("n", true, "e").await.unwrap();
    pg.stop();
    let started = Instant::now();
    assert!(db.drains().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    let drains = loop {
        match db.drains().await {
            Ok(d) => break d,
            Err(_) => {
                assert!(Instant::now() < deadline, "never reconnected");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(drains.contains("n"));
}

#[tokio::test]
async fn a_bad_url_is_an_error_that_does_not_show_the_password() {
    let err = Database::new(&Settings {
        url: "postgres://user:s3cret@/db?sslmode=bogus".into(),
        password_file: None,
        ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(!err.contains("s3cret"), "{err}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
fn tls_material(cn: &str) -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_the_database_is_verified_against_database_ca() {
    let pg = Postgres::start();
    let (ca, cert, key) = tls_material("db test CA");
    pg.enable_tls(&cert, &key);
    let ca_file = pg.dir().join("db-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let url = pg.url().replace("sslmode=disable", "sslmode=require");
    let verified = Database::new(&Settings {
        url: url.clone(),
        password_file: None,
        ca: Some(ca_file),
    })
    .unwrap();
    schema::migrate(&verified).await.unwrap();
    assert_eq!(
        pg.psql(
            "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'nakama-edge'"
        ),
        "1",
        "the edge's connection is encrypted"
    );
    // A server certificate from another CA is refused.
    let (other_ca, _, _) = tls_material("another CA");
    let other_file = pg.dir().join("other-ca.pem");
    std::fs::write(&other_file, other_ca).unwrap();
    let wrong = Database::new(&Settings {
        url,
        password_file: None,
        ca: Some(other_file),
    })
    .unwrap();
    let err = wrong.versions().await.unwrap_err().to_string();
    assert!(!err.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_may_come_from_a_file() {
    let pg = Postgres::start();
    pg.psql("CREATE ROLE edge LOGIN PASSWORD 'from-the-file'");
    pg.psql("GRANT CREATE, USAGE ON SCHEMA public TO edge");
    // Password authentication for this role only.
    let hba = pg.dir().join("data").join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all edge 127.0.0.1/32 scram-sha-256\n{text}"),
    )
    .unwrap();
    pg.psql("SELECT pg_reload_conf()");
    let file = pg.dir().join("password");
    std::fs::write(&file, "from-the-file\n").unwrap();
    let url = pg.url().replace("postgres@", "edge@");
    let db = Database::new(&Settings {
        url: url.clone(),
        password_file: Some(file),
        ca: None,
    })
    .unwrap();
    schema::migrate(&db).await.unwrap();
    let without = Database::new(&Settings {
        url,
        password_file: None,
        ca: None,
    })
    .unwrap();
    assert!(without.versions().await.is_err(), "no password, no entry");
}
