//! Keeping an ACME certificate on the https listener: first issuance, renewal, retries; with
//! `[cluster]`, one order for every edge.
//!
//! ```text
//!   start: stored certificate valid for the domains? ── yes: served; renewal planned
//!                                                    └─ no: placeholder served; issue now
//!   loop: (cluster) another edge's certificate newer? ── adopt it: store, serve, plan
//!         wait until due (renewal time, an ARI re-check, another edge's certificate, or now)
//!         (cluster) take the order's lease ── held by another edge: wait for its certificate
//!         └─ order ── answers installed here; (cluster) published, and every live edge has them
//!              ├─ ok: newer and complete? ── store (and share), swap into the resolver, plan
//!              └─ failed: log what the CA said, count, back off (exponential, jitter, rate
//!                 limits honoured); the served certificate stays; (cluster) the lease stays
//!                 with this edge, so that no other edge orders meanwhile
//! ```
//!
//! With `[cluster]` the ACME account and the certificates live in the cluster database
//! (`acme.state_dir` keeps this edge's copy, for a start while the database is away). At most
//! one edge orders a certificate at a time: it holds a lease (renewed while held, taken over
//! if its holder dies), and checks once it has it whether another edge did the work already.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nakama_edge_certs::acme::{
    certificate_id, load_stored, AcmeClient, AcmeError, AcmeSettings, Challenge, Issued,
};
use nakama_edge_certs::info::CertInfo;
use nakama_edge_certs::renewal::{may_replace, random_u64, renewal_time, Backoff};
use nakama_edge_certs::store::{CertStore, StoredCertificate};
use nakama_edge_certs::ChallengeAnswer;
use nakama_edge_cluster::certificates::{domain_set, SharedCertificate};
use nakama_edge_cluster::challenges::Answer;
use nakama_edge_cluster::leases::Lease;
use nakama_edge_cluster::ClusterError;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rustls::pki_types::CertificateDer;

use crate::cluster::ClusterLink;
use crate::ops::metrics::AcmeAttempt;
use crate::state::Shared;

/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long an order's lease lasts unless renewed; its holder renews it every third of this.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How long published challenge answers stay in the database.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// How long the ordering edge waits for every live edge to have its answers before asking
/// the CA anyway.
const ANSWERS_PATIENCE: Duration = Duration::from_secs(10);
/// How often an edge that does not hold the lease looks again (besides being told).
const WAIT_FOR_OTHERS: Duration = Duration::from_secs(5);

/// The certificate being served and the facts renewal needs.
#[derive(Clone)]
pub struct Served {
    /// Its facts.
    pub info: CertInfo,
    /// Its leaf, which names it to the CA.
    pub leaf: CertificateDer<'static>,
}

impl Served {
    /// The served facts of a certificate just loaded or issued.
    pub fn of(issued: &Issued) -> Option<Served> {
        let leaf = issued.certified.cert.first()?.clone();
        Some(Served {
            info: issued.info.clone(),
            leaf,
        })
    }
}

/// The renewal plan for the served certificate.
#[derive(Debug, Clone, Copy)]
struct Plan {
    renew_at: SystemTime,
    /// When to ask the CA's renewal information again (RFC 9773 Retry-After).
    recheck_at: Option<SystemTime>,
    /// The CA offers renewal information: orders may name the certificate they replace.
    ari: bool,
}

/// What the ACME task needs, known before the shared state exists.
pub struct AcmeTask {
    settings: AcmeSettings,
    store: CertStore,
    retry_backoff: Duration,
    initial: Option<Served>,
}

impl AcmeTask {
    /// A task keeping a certificate for `settings`, starting from `initial` (the stored
    /// certificate, if it is usable).
    pub fn new(
        settings: AcmeSettings,
        store: CertStore,
        retry_backoff: Duration,
        initial: Option<Served>,
    ) -> Self {
        AcmeTask {
            settings,
            store,
            retry_backoff,
            initial,
        }
    }

    /// The background service serving its certificates through `shared`.
    pub fn start_with(self, shared: Arc<Shared>) -> AcmeService {
        AcmeService {
            shared,
            settings: self.settings,
            store: self.store,
            retry_backoff: self.retry_backoff,
            initial: self.initial,
        }
    }
}

/// The running ACME task.
pub struct AcmeService {
    shared: Arc<Shared>,
    settings: AcmeSettings,
    store: CertStore,
    retry_backoff: Duration,
    initial: Option<Served>,
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Acme(#[from] AcmeError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the order's lease was lost (the cluster database was away too long); another edge may order")]
    LeaseLost,
}

impl AttemptError {
    fn rate_limited(&self) -> bool {
        matches!(self, AttemptError::Acme(e) if e.is_rate_limited())
    }
    fn unknown_account(&self) -> bool {
        matches!(self, AttemptError::Acme(e) if e.is_unknown_account())
    }
}

/// An order's lease, renewed in the background while held.
struct HeldLease {
    lease: Lease,
    link: Arc<ClusterLink>,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl HeldLease {
    fn start(link: Arc<ClusterLink>, lease: Lease) -> HeldLease {
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn({
            let (link, lease, lost) = (link.clone(), lease.clone(), lost.clone());
            async move {
                loop {
                    tokio::time::sleep(LEASE_TTL / 3).await;
                    match link.db.renew(&lease, LEASE_TTL).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::Relaxed);
                            return;
                        }
                        // Unreachable for a moment: the next renewal may still be in time.
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot renew the ACME order's lease")
                        }
                    }
                }
            }
        });
        HeldLease {
            lease,
            link,
            lost,
            renewer,
        }
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.link.db.release(&self.lease).await {
            tracing::debug!(error = %e, "cannot release the ACME order's lease; it lapses by itself");
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A challenge answer as the cluster database holds it.
pub fn answer_to_row(a: &ChallengeAnswer) -> Answer {
    Answer {
        kind: a.kind.as_str().to_string(),
        key: a.key.clone(),
        answer: a.answer.clone(),
    }
}

/// A challenge answer from the cluster database, if its kind is one this edge knows.
pub fn answer_from_row(a: &Answer) -> Option<ChallengeAnswer> {
    let kind = match a.kind.as_str() {
        "http-01" => Challenge::Http01,
        "tls-alpn-01" => Challenge::TlsAlpn01,
        _ => return None,
    };
    Some(ChallengeAnswer {
        kind,
        key: a.key.clone(),
        answer: a.answer.clone(),
    })
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl AcmeService {
    fn cluster(&self) -> Option<&Arc<ClusterLink>> {
        self.shared.cluster.as_ref()
    }

    fn lease_name(&self) -> String {
        format!("acme-order/{}", domain_set(&self.settings.domains))
    }

    /// The ACME account: with `[cluster]` the one in the database (created and stored there
    /// by the first edge that needs it), else the one in `acme.state_dir`.
    async fn client<'a>(
        &self,
        client: &'a mut Option<AcmeClient>,
    ) -> Result<&'a AcmeClient, AttemptError> {
        if let Some(c) = client {
            return Ok(c);
        }
        let Some(link) = self.cluster() else {
            return Ok(client.insert(AcmeClient::connect(&self.settings, &self.store).await?));
        };
        let directory = &self.settings.directory;
        let made = match link.db.acme_account(directory).await? {
            Some(json) => AcmeClient::restore(&self.settings, &json).await?,
            None => {
                let (made, json) = AcmeClient::create(&self.settings).await?;
                let kept = link
                    .db
                    .save_acme_account(directory, &json, &link.name)
                    .await?;
                if kept == json {
                    made
                } else {
                    // Another edge stored one first: everyone uses that one.
                    AcmeClient::restore(&self.settings, &kept).await?
                }
            }
        };
        Ok(client.insert(made))
    }

    async fn forget_account(&self) {
        if let Some(link) = self.cluster() {
            if let Err(e) = link.db.forget_acme_account(&self.settings.directory).await {
                tracing::warn!(error = %e, "cannot remove the ACME account from the cluster database");
            }
        }
        if let Err(e) = self.store.forget_account() {
            tracing::error!(error = %e, "cannot remove the stored ACME account");
        }
    }

    async fn plan(&self, client: &mut Option<AcmeClient>, served: &Served) -> Plan {
        let window = match self.client(client).await {
            Ok(c) => match c.renewal_window(&served.leaf).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, "no ACME renewal information; renewing at 2/3 of the lifetime");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "ACME server unreachable for renewal information");
                None
            }
        };
        let now = SystemTime::now();
        let renew_at = renewal_time(&served.info, window.as_ref().map(|(w, _)| w), random_u64());
        Plan {
            renew_at,
            recheck_at: window.map(|(_, again)| now + again),
            ari: window.is_some(),
        }
    }

    /// Serve `issued` (obtained here, or by another edge) and keep it locally.
    fn serve(&self, issued: &Issued) {
        if let Err(e) = self
            .store
            .save_certificate(&self.settings.domains, &issued.stored)
        {
            tracing::error!(error = %e, "cannot store the certificate in acme.state_dir; serving it anyway");
        }
        self.shared.certs.replace(issued.certified.clone());
        self.shared.certificate_ready.store(true, Ordering::Relaxed);
    }

    /// With `[cluster]`: serve the cluster's certificate if it is newer than `served`.
    /// Returns whether it was adopted.
    async fn adopt_shared(&self, served: &mut Option<Served>) -> bool {
        let Some(link) = self.cluster() else {
            return false;
        };
        let shared = match link
            .db
            .certificate(&domain_set(&self.settings.domains))
            .await
        {
            Ok(Some(shared)) => shared,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster's certificate");
                return false;
            }
        };
        let issued = match load_stored(StoredCertificate {
            chain_pem: shared.chain_pem,
            key_pem: shared.key_pem,
        }) {
            Ok(issued) => issued,
            Err(e) => {
                tracing::warn!(error = %e, by = %shared.updated_by, "the cluster's certificate is unusable");
                return false;
            }
        };
        let current = served.as_ref().map(|s| &s.info);
        if may_replace(
            &issued.info,
            current,
            &self.settings.domains,
            SystemTime::now(),
        )
        .is_err()
        {
            return false;
        }
        self.serve(&issued);
        tracing::info!(domains = ?self.settings.domains, by = %shared.updated_by, expires = ?issued.info.not_after, "serving the certificate another edge obtained");
        *served = Served::of(&issued);
        true
    }

    /// One order. With `[cluster]` the answers go to the database first, and the CA is asked
    /// once every live edge has them (or [`ANSWERS_PATIENCE`] has passed).
    async fn attempt(
        &self,
        client: &mut Option<AcmeClient>,
        served: Option<&Served>,
        ari: bool,
    ) -> Result<Issued, AttemptError> {
        let replaces = served.filter(|_| ari).and_then(|s| certificate_id(&s.leaf));
        let challenges = self.shared.certs.challenges();
        let client = self.client(client).await?;
        let (pending, answers) = client
            .start_order(&self.settings, challenges, replaces)
            .await?;
        let Some(link) = self.cluster() else {
            return Ok(pending.finish(&self.settings, challenges).await?);
        };
        let rows: Vec<Answer> = answers.iter().map(answer_to_row).collect();
        let published = link.db.publish_challenges(&rows, CHALLENGE_TTL).await;
        let seq = match published {
            Ok(seq) => seq,
            Err(e) => {
                challenges.clear_own();
                return Err(e.into());
            }
        };
        self.wait_until_every_edge_has(link, seq).await;
        let result = pending.finish(&self.settings, challenges).await;
        if let Err(e) = link.db.withdraw_challenges(&rows).await {
            tracing::debug!(error = %e, "cannot withdraw the challenge answers; they expire by themselves");
        }
        Ok(result?)
    }

    async fn wait_until_every_edge_has(&self, link: &ClusterLink, seq: i64) {
        let deadline = tokio::time::Instant::now() + ANSWERS_PATIENCE;
        loop {
            let behind: Vec<String> = match link.db.live_edges().await {
                Ok(live) => live
                    .into_iter()
                    .filter(|e| e.heartbeat.name != link.name && e.heartbeat.challenges_seen < seq)
                    .map(|e| e.heartbeat.name)
                    .collect(),
                Err(e) => vec![format!("(unknown: {e})")],
            };
            if behind.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(edges = ?behind, "these edges did not load the challenge answers in time; asking the CA to validate anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Wait `d`, or until another edge stores a certificate (with `[cluster]`). `false`: shut
/// down.
async fn pause(link: Option<&ClusterLink>, d: Duration, shutdown: &mut ShutdownWatch) -> bool {
    let changed = async {
        match link {
            Some(l) => l.certificates_changed.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = changed => true,
        _ = shutdown.changed() => false,
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let domains = &self.settings.domains;
        let challenge = self.settings.challenge.as_str();
        let link = self.cluster().cloned();
        let mut served = self.initial.clone();
        let mut client: Option<AcmeClient> = None;
        let mut plan: Option<Plan> = None;
        let mut backoff = Backoff::new(self.retry_backoff, MAX_BACKOFF);
        let mut held: Option<HeldLease> = None;
        if let Some(link) = &link {
            // Edges started together see each other within a couple of heartbeats: only
            // then does an order know whom to wait for before the CA validates.
            while !link.is_up() {
                if !pause(None, Duration::from_millis(100), &mut shutdown).await {
                    return;
                }
            }
            if !pause(None, crate::cluster::HEARTBEAT * 2, &mut shutdown).await {
                return;
            }
        }
        loop {
            if held.is_none() && self.adopt_shared(&mut served).await {
                plan = None;
            }
            if let Some(current) = served
                .as_ref()
                .filter(|s| s.info.covers(domains) && held.is_none())
            {
                let p = match plan {
                    Some(p) => p,
                    None => {
                        let p = self.plan(&mut client, current).await;
                        tracing::info!(domains = ?domains, renew_in = ?until(p.renew_at), "certificate renewal planned");
                        plan = Some(p);
                        p
                    }
                };
                let wake = p.recheck_at.map_or(p.renew_at, |r| r.min(p.renew_at));
                if wake > SystemTime::now() {
                    if !pause(link.as_deref(), until(wake), &mut shutdown).await {
                        break;
                    }
                    if SystemTime::now() < p.renew_at {
                        plan = None; // ask the CA's renewal information again, or adopt
                        continue;
                    }
                }
            }

            if let Some(link) = &link {
                if held.as_ref().is_some_and(HeldLease::lost) {
                    held = None;
                    continue;
                }
                if held.is_none() {
                    match link
                        .db
                        .acquire(&self.lease_name(), &link.name, LEASE_TTL)
                        .await
                    {
                        Ok(Some(lease)) => held = Some(HeldLease::start(link.clone(), lease)),
                        Ok(None) => {
                            tracing::debug!(
                                "another edge is ordering the certificate; waiting for it"
                            );
                            if !pause(Some(link), WAIT_FOR_OTHERS, &mut shutdown).await {
                                break;
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot take the ACME order's lease; the current certificate keeps serving");
                            if !pause(Some(link), WAIT_FOR_OTHERS, &mut shutdown).await {
                                break;
                            }
                            continue;
                        }
                    }
                    // Another edge may have finished just before the lease came free.
                    if self.adopt_shared(&mut served).await {
                        if let Some(lease) = held.take() {
                            lease.release().await;
                        }
                        plan = None;
                        continue;
                    }
                }
            }

            let kind = if served.is_some() {
                AcmeAttempt::Renew
            } else {
                AcmeAttempt::Issue
            };
            let ari = plan.is_some_and(|p| p.ari);
            let outcome = match self.attempt(&mut client, served.as_ref(), ari).await {
                Ok(_) if held.as_ref().is_some_and(HeldLease::lost) => Err(AttemptError::LeaseLost),
                other => other,
            };
            let failure = match outcome {
                Ok(issued) => match may_replace(
                    &issued.info,
                    served.as_ref().map(|s| &s.info),
                    domains,
                    SystemTime::now(),
                ) {
                    Ok(()) => {
                        if let Some(link) = &link {
                            let shared = SharedCertificate {
                                chain_pem: issued.stored.chain_pem.clone(),
                                key_pem: issued.stored.key_pem.clone(),
                                updated_by: link.name.clone(),
                            };
                            let saved = link
                                .db
                                .save_certificate(
                                    &domain_set(domains),
                                    &shared,
                                    unix_seconds(issued.info.not_after),
                                )
                                .await;
                            if let Err(e) = saved {
                                tracing::error!(error = %e, "cannot store the new certificate in the cluster database: the other edges do not get it until this edge renews again");
                            }
                        }
                        self.serve(&issued);
                        if let Some(lease) = held.take() {
                            lease.release().await;
                        }
                        self.shared.metrics.acme_attempt(kind, true);
                        let expires = issued.info.not_after;
                        tracing::info!(domains = ?domains, challenge, ?expires, "{} certificate obtained and served", kind.as_str());
                        served = Served::of(&issued);
                        plan = None;
                        backoff.reset();
                        None
                    }
                    Err(refusal) => Some((
                        format!("the CA's certificate cannot replace the served one: {refusal:?}"),
                        false,
                    )),
                },
                Err(e) => {
                    if e.unknown_account() {
                        tracing::warn!(error = %e, "the ACME server does not know the stored account; a new one will be created");
                        self.forget_account().await;
                        client = None;
                    }
                    Some((e.to_string(), e.rate_limited()))
                }
            };
            if let Some((why, rate_limited)) = failure {
                self.shared.metrics.acme_attempt(kind, false);
                let delay = backoff.next(random_u64(), rate_limited, None);
                tracing::error!(
                    domains = ?domains,
                    challenge,
                    directory = %self.settings.directory,
                    retry_in = ?delay,
                    "ACME {} failed: {why}; the current certificate keeps serving",
                    kind.as_str()
                );
                // The lease (with [cluster]) stays: no other edge orders while this one waits.
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
        if let Some(lease) = held.take() {
            lease.release().await;
        }
    }
}
