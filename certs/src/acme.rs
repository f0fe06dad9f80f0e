//! Obtaining certificates from an ACME CA with instant-acme.
//!
//! ```text
//!   AcmeClient::connect ── account.json in the store? ── yes: restore
//!                                                    └─ no: create, store
//!   (several edges: AcmeClient::restore / create, the credentials kept by the caller)
//!   AcmeClient::start_order ── new order ── per authorization: the answer installed in
//!        │                    Challenges (HTTP-01 token / TLS-ALPN-01 certificate) and returned
//!        │   (the caller may publish the answers to other edges here)
//!   PendingOrder::finish ── set ready ── poll ready ── CSR (our own P-256 key) ── finalize
//!                           ── poll certificate ── Issued
//!   AcmeClient::renewal_window ── ARI, when the CA offers it
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use crate::challenge::{ChallengeAnswer, Challenges};
use crate::info::CertInfo;
use crate::load::{self, CertError};
use crate::renewal::Window;
use crate::store::{CertStore, StoreError, StoredCertificate};

/// The challenge type to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Challenge {
    /// HTTP-01, on the http listener.
    Http01,
    /// TLS-ALPN-01, on the https listener.
    TlsAlpn01,
}

impl Challenge {
    /// The name operators know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// What to ask the CA for, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Names on the certificate.
    pub domains: Vec<String>,
    /// The directory URL.
    pub directory: String,
    /// Contact URLs.
    pub contact: Vec<String>,
    /// The challenge to answer.
    pub challenge: Challenge,
    /// A root to trust for the ACME server itself.
    pub directory_ca: Option<PathBuf>,
}

/// Why an ACME step failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA (or the way to it) failed.
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    /// The order did not become ready or valid.
    #[error("order {status}: {detail}")]
    Order {
        /// The order's final status.
        status: String,
        /// What the CA said about the authorizations.
        detail: String,
    },
    /// The state directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A certificate could not be made or read.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The stored account could not be read.
    #[error("stored ACME account is unreadable: {0}")]
    Account(serde_json::Error),
}

impl AcmeError {
    fn problem_type(&self) -> Option<&str> {
        match self {
            AcmeError::Acme(instant_acme::Error::Api(p)) => p.r#type.as_deref(),
            _ => None,
        }
    }

    /// The CA said "rate limited".
    pub fn is_rate_limited(&self) -> bool {
        self.problem_type()
            .is_some_and(|t| t.ends_with(":rateLimited"))
    }

    /// The CA does not know the stored account (a different CA, or its state was reset).
    pub fn is_unknown_account(&self) -> bool {
        self.problem_type()
            .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
    }
}

/// A certificate just issued.
pub struct Issued {
    /// As stored on disk.
    pub stored: StoredCertificate,
    /// Ready to serve.
    pub certified: Arc<CertifiedKey>,
    /// Its facts.
    pub info: CertInfo,
}

/// A stored certificate made ready to serve, or why it cannot be.
pub fn load_stored(stored: StoredCertificate) -> Result<Issued, CertError> {
    let certified = load::from_pem(
        stored.chain_pem.as_bytes(),
        stored.key_pem.as_bytes(),
        "stored certificate",
    )?;
    let info = CertInfo::of(&certified.cert[0])?;
    Ok(Issued {
        stored,
        certified,
        info,
    })
}

/// An ACME account ready to order.
pub struct AcmeClient {
    account: Account,
}

fn builder(settings: &AcmeSettings) -> Result<instant_acme::AccountBuilder, instant_acme::Error> {
    match &settings.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
}

/// How long to wait for the CA to validate an order or issue its certificate.
const ORDER_PATIENCE: Duration = Duration::from_secs(90);

impl AcmeClient {
    /// Restore the stored account, or create one and store it.
    pub async fn connect(
        settings: &AcmeSettings,
        store: &CertStore,
    ) -> Result<AcmeClient, AcmeError> {
        if let Some(json) = store.account()? {
            return AcmeClient::restore(settings, &json).await;
        }
        let (client, json) = AcmeClient::create(settings).await?;
        store.save_account(&json)?;
        Ok(client)
    }

    /// The account whose credentials (JSON, as [`AcmeClient::create`] returns them) are
    /// `json`.
    pub async fn restore(settings: &AcmeSettings, json: &str) -> Result<AcmeClient, AcmeError> {
        let credentials: AccountCredentials =
            serde_json::from_str(json).map_err(AcmeError::Account)?;
        let account = builder(settings)?.from_credentials(credentials).await?;
        Ok(AcmeClient { account })
    }

    /// A new account at the CA, and its credentials (JSON) to keep.
    pub async fn create(settings: &AcmeSettings) -> Result<(AcmeClient, String), AcmeError> {
        let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = builder(settings)?
            .create(&new, settings.directory.clone(), None)
            .await?;
        let json = serde_json::to_string(&credentials).map_err(AcmeError::Account)?;
        tracing::info!(directory = %settings.directory, account = account.id(), "ACME account created");
        Ok((AcmeClient { account }, json))
    }

    /// Order a certificate for `settings.domains`, answering challenges through `challenges`.
    /// `replaces` names the certificate this one renews, for a CA that offers ARI.
    pub async fn order(
        &self,
        settings: &AcmeSettings,
        challenges: &Challenges,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<Issued, AcmeError> {
        let (pending, _answers) = self.start_order(settings, challenges, replaces).await?;
        pending.finish(settings, challenges).await
    }

    /// The first half of an order: the order made, and every challenge's answer installed in
    /// `challenges` and returned, so that other edges can give them too before the CA is
    /// asked to validate ([`PendingOrder::finish`]).
    pub async fn start_order(
        &self,
        settings: &AcmeSettings,
        challenges: &Challenges,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<(PendingOrder, Vec<ChallengeAnswer>), AcmeError> {
        let result = self.start_order_inner(settings, challenges, replaces).await;
        if result.is_err() {
            challenges.clear_own();
        }
        result
    }

    async fn start_order_inner(
        &self,
        settings: &AcmeSettings,
        challenges: &Challenges,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<(PendingOrder, Vec<ChallengeAnswer>), AcmeError> {
        let identifiers: Vec<Identifier> = settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(r) = replaces {
            new_order = new_order.replaces(r);
        }
        let mut order = self.account.new_order(&new_order).await?;
        let kind = challenge_type(settings.challenge);
        let mut answers = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let domain = authz.identifier().to_string();
            let challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::Order {
                    status: "unusable".into(),
                    detail: format!(
                        "the CA offers no {} challenge for {domain}",
                        settings.challenge.as_str()
                    ),
                })?;
            let key_authorization = challenge.key_authorization();
            let answer = match settings.challenge {
                Challenge::Http01 => {
                    Challenges::http01_answer(&challenge.token, key_authorization.as_str())
                }
                Challenge::TlsAlpn01 => {
                    Challenges::tls_alpn01_answer(&domain, key_authorization.digest().as_ref())
                }
            };
            challenges.install(&answer, true)?;
            answers.push(answer);
        }
        Ok((PendingOrder { order }, answers))
    }

    /// The CA's suggested renewal window for `leaf` and when to ask again, or `None` when the
    /// CA offers no renewal information.
    pub async fn renewal_window(
        &self,
        leaf: &CertificateDer<'_>,
    ) -> Result<Option<(Window, Duration)>, AcmeError> {
        let Ok(id) = CertificateIdentifier::try_from(leaf) else {
            return Ok(None);
        };
        match self.account.renewal_info(&id).await {
            Ok((info, ask_again)) => {
                let w = info.suggested_window;
                let to_system = |t: time::OffsetDateTime| {
                    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
                };
                Ok(Some((
                    Window {
                        start: to_system(w.start),
                        end: to_system(w.end),
                    },
                    ask_again,
                )))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// An order whose challenge answers are out, waiting for the CA to validate them.
pub struct PendingOrder {
    order: instant_acme::Order,
}

fn challenge_type(challenge: Challenge) -> ChallengeType {
    match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

impl PendingOrder {
    /// The second half of an order: the CA asked to validate, the certificate made from our
    /// own key. This edge's answers leave `challenges` at the end, whatever happened.
    pub async fn finish(
        self,
        settings: &AcmeSettings,
        challenges: &Challenges,
    ) -> Result<Issued, AcmeError> {
        let result = self.finish_inner(settings).await;
        challenges.clear_own();
        result
    }

    async fn finish_inner(mut self, settings: &AcmeSettings) -> Result<Issued, AcmeError> {
        let order = &mut self.order;
        let kind = challenge_type(settings.challenge);
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let domain = authz.identifier().to_string();
            if let Some(mut challenge) = authz.challenge(kind.clone()) {
                tracing::info!(%domain, challenge = settings.challenge.as_str(), "ACME challenge ready");
                challenge.set_ready().await?;
            }
        }

        let retry = RetryPolicy::new().timeout(ORDER_PATIENCE);
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order {
                status: format!("{status:?}"),
                detail: failed_authorizations(order).await,
            });
        }

        let key = rcgen::KeyPair::generate().map_err(CertError::from)?;
        let mut params =
            rcgen::CertificateParams::new(settings.domains.clone()).map_err(CertError::from)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(CertError::from)?;
        order.finalize_csr(csr.der()).await?;
        let chain_pem = order.poll_certificate(&retry).await?;
        Ok(load_stored(StoredCertificate {
            chain_pem,
            key_pem: key.serialize_pem(),
        })?)
    }
}

/// The identifier ARI and `replaces` use for `leaf`.
pub fn certificate_id(leaf: &CertificateDer<'_>) -> Option<CertificateIdentifier<'static>> {
    CertificateIdentifier::try_from(leaf)
        .ok()
        .map(CertificateIdentifier::into_owned)
}

async fn failed_authorizations(order: &mut instant_acme::Order) -> String {
    let mut detail = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        if authz.status != AuthorizationStatus::Valid {
            let errors: Vec<String> = authz
                .challenges
                .iter()
                .filter_map(|c| c.error.as_ref().map(|e| e.to_string()))
                .collect();
            detail.push(format!(
                "{}: {:?} {}",
                authz.identifier(),
                authz.status,
                errors.join("; ")
            ));
        }
    }
    if detail.is_empty() {
        "no authorization failed".into()
    } else {
        detail.join(", ")
    }
}
