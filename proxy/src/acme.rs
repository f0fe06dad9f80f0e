//! Keeping an ACME certificate on the https listener: first issuance, renewal, retries.
//!
//! ```text
//!   start: stored certificate valid for the domains? ── yes: served; renewal planned
//!                                                    └─ no: placeholder served; issue now
//!   loop: wait until due (renewal time, or an ARI re-check, or now)
//!         └─ order ── ok: newer and complete? ── store, swap into the resolver, plan renewal
//!                  └─ failed: log what the CA said, count, back off (exponential, jitter,
//!                     rate limits honoured); the served certificate stays
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nakama_edge_certs::acme::{certificate_id, AcmeClient, AcmeError, AcmeSettings, Issued};
use nakama_edge_certs::info::CertInfo;
use nakama_edge_certs::renewal::{may_replace, random_u64, renewal_time, Backoff};
use nakama_edge_certs::store::CertStore;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rustls::pki_types::CertificateDer;

use crate::metrics::AcmeAttempt;
use crate::state::Shared;

/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

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
        let AcmeTask {
            settings,
            store,
            retry_backoff,
            initial,
        } = self;
        AcmeService {
            shared,
            settings,
            store,
            retry_backoff,
            initial,
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

impl AcmeService {
    async fn client<'a>(
        &self,
        client: &'a mut Option<AcmeClient>,
    ) -> Result<&'a AcmeClient, AcmeError> {
        match client {
            Some(c) => Ok(c),
            None => Ok(client.insert(AcmeClient::connect(&self.settings, &self.store).await?)),
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

    async fn attempt(
        &self,
        client: &mut Option<AcmeClient>,
        served: Option<&Served>,
        ari: bool,
    ) -> Result<Issued, AcmeError> {
        let replaces = served.filter(|_| ari).and_then(|s| certificate_id(&s.leaf));
        let client = self.client(client).await?;
        client
            .order(&self.settings, self.shared.certs.challenges(), replaces)
            .await
    }
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let domains = &self.settings.domains;
        let challenge = self.settings.challenge.as_str();
        let mut served = self.initial.clone();
        let mut client: Option<AcmeClient> = None;
        let mut plan: Option<Plan> = None;
        let mut backoff = Backoff::new(self.retry_backoff, MAX_BACKOFF);
        loop {
            if let Some(current) = served.as_ref().filter(|s| s.info.covers(domains)) {
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
                    tokio::select! {
                        _ = tokio::time::sleep(until(wake)) => {}
                        _ = shutdown.changed() => return,
                    }
                    if SystemTime::now() < p.renew_at {
                        plan = None; // time to ask the CA's renewal information again
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
            let failure = match self.attempt(&mut client, served.as_ref(), ari).await {
                Ok(issued) => match may_replace(
                    &issued.info,
                    served.as_ref().map(|s| &s.info),
                    domains,
                    SystemTime::now(),
                ) {
                    Ok(()) => {
                        if let Err(e) = self.store.save_certificate(domains, &issued.stored) {
                            tracing::error!(error = %e, "cannot store the new certificate; serving it anyway");
                        }
                        self.shared.certs.replace(issued.certified.clone());
                        self.shared.certificate_ready.store(true, Ordering::Relaxed);
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
                    if e.is_unknown_account() {
                        tracing::warn!(error = %e, "the ACME server does not know the stored account; a new one will be created");
                        if let Err(e) = self.store.forget_account() {
                            tracing::error!(error = %e, "cannot remove the stored ACME account");
                        }
                        client = None;
                    }
                    Some((e.to_string(), e.is_rate_limited()))
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
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}
