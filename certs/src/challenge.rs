//! Answers to the ACME challenges in progress, read by the listeners.
//!
//! ```text
//!   this edge's order ── install(own) ──┐
//!                                       ├─► Challenges ◄── GET /.well-known/acme-challenge/ (HTTP-01)
//!   other edges' orders (the cluster) ──┘                ◄── ALPN acme-tls/1 handshakes (TLS-ALPN-01)
//!       replace_shared(all answers in force)
//! ```
//!
//! An answer travels between edges as a [`ChallengeAnswer`]: for TLS-ALPN-01 it is the
//! digest of the key authorization, from which every edge makes the same RFC 8737
//! certificate for itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;

use crate::acme::Challenge;
use crate::load::CertError;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One challenge answer, as an edge publishes it for the others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChallengeAnswer {
    /// Which challenge.
    pub kind: Challenge,
    /// The token (HTTP-01) or the domain, lowercase (TLS-ALPN-01).
    pub key: String,
    /// The key authorization (HTTP-01) or the hex SHA-256 of it (TLS-ALPN-01).
    pub answer: String,
}

/// A TLS-ALPN-01 certificate and the digest it was made for.
#[derive(Debug)]
struct AlpnCert {
    digest_hex: String,
    certified: Arc<CertifiedKey>,
}

/// Pending challenge responses: HTTP-01 key authorizations by token, TLS-ALPN-01
/// certificates by domain.
#[derive(Debug, Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<String, AlpnCert>>,
    /// The answers of this edge's own order, which other edges' lists do not remove.
    own: RwLock<HashSet<(Challenge, String)>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Challenges {
    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    /// The certificate to answer an `acme-tls/1` handshake for `domain` with.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&domain.to_ascii_lowercase())
            .map(|c| c.certified.clone())
    }

    /// The answer for an HTTP-01 `token` with `key_authorization`.
    pub fn http01_answer(token: &str, key_authorization: &str) -> ChallengeAnswer {
        ChallengeAnswer {
            kind: Challenge::Http01,
            key: token.to_string(),
            answer: key_authorization.to_string(),
        }
    }

    /// The answer for a TLS-ALPN-01 `domain` whose key authorization hashes to `sha256`.
    pub fn tls_alpn01_answer(domain: &str, sha256: &[u8]) -> ChallengeAnswer {
        ChallengeAnswer {
            kind: Challenge::TlsAlpn01,
            key: domain.to_ascii_lowercase(),
            answer: hex(sha256),
        }
    }

    /// Give `answer` from now on; `own`: it belongs to this edge's order.
    pub fn install(&self, answer: &ChallengeAnswer, own: bool) -> Result<(), CertError> {
        match answer.kind {
            Challenge::Http01 => {
                self.http01
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(answer.key.clone(), answer.answer.clone());
            }
            Challenge::TlsAlpn01 => {
                let already = self
                    .tls_alpn01
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&answer.key)
                    .is_some_and(|c| c.digest_hex == answer.answer);
                if !already {
                    let digest = unhex(&answer.answer).ok_or_else(|| {
                        CertError::Invalid(format!(
                            "TLS-ALPN-01 answer for {} is not a hex digest",
                            answer.key
                        ))
                    })?;
                    let certified = alpn_certificate(&answer.key, &digest)?;
                    self.tls_alpn01
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            answer.key.clone(),
                            AlpnCert {
                                digest_hex: answer.answer.clone(),
                                certified,
                            },
                        );
                }
            }
        }
        if own {
            self.own
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert((answer.kind, answer.key.clone()));
        }
        Ok(())
    }

    /// Give exactly `shared` (the cluster's answers in force) besides this edge's own.
    pub fn replace_shared(&self, shared: &[ChallengeAnswer]) -> Result<(), CertError> {
        let own = self.own.read().unwrap_or_else(|e| e.into_inner()).clone();
        let wanted: HashSet<(Challenge, &str)> =
            shared.iter().map(|a| (a.kind, a.key.as_str())).collect();
        let keep = |kind: Challenge, key: &str| {
            own.contains(&(kind, key.to_string())) || wanted.contains(&(kind, key))
        };
        self.http01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(Challenge::Http01, k));
        self.tls_alpn01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(Challenge::TlsAlpn01, k));
        for answer in shared {
            if !own.contains(&(answer.kind, answer.key.clone())) {
                self.install(answer, false)?;
            }
        }
        Ok(())
    }

    /// Forget this edge's own answers (its order is over, one way or the other).
    pub fn clear_own(&self) {
        let own = std::mem::take(&mut *self.own.write().unwrap_or_else(|e| e.into_inner()));
        let mut http01 = self.http01.write().unwrap_or_else(|e| e.into_inner());
        let mut tls = self.tls_alpn01.write().unwrap_or_else(|e| e.into_inner());
        for (kind, key) in own {
            match kind {
                Challenge::Http01 => http01.remove(&key),
                Challenge::TlsAlpn01 => tls.remove(&key).map(|_| String::new()),
            };
        }
    }
}

/// The RFC 8737 certificate for `domain`: the domain as its only SAN and the SHA-256 of the
/// key authorization in the critical acmeIdentifier extension.
fn alpn_certificate(
    domain: &str,
    key_authorization_sha256: &[u8],
) -> Result<Arc<CertifiedKey>, CertError> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
        key_authorization_sha256,
    )];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    crate::load::challenge_certified(cert.der().clone(), key.serialize_der())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_answers_replace_each_other_but_never_this_edges_own() {
        let c = Challenges::default();
        let own = Challenges::http01_answer("mine", "mine.thumb");
        c.install(&own, true).unwrap();
        let theirs = Challenges::http01_answer("theirs", "theirs.thumb");
        let alpn = Challenges::tls_alpn01_answer("Play.Example", &[7u8; 32]);
        c.replace_shared(&[theirs.clone(), alpn.clone()]).unwrap();
        assert_eq!(c.http01("theirs").as_deref(), Some("theirs.thumb"));
        assert_eq!(c.http01("mine").as_deref(), Some("mine.thumb"));
        let cert = c.tls_alpn01("play.example").unwrap();
        // The same answer again keeps the same certificate (none is made per poll).
        c.replace_shared(&[theirs, alpn]).unwrap();
        assert!(Arc::ptr_eq(&cert, &c.tls_alpn01("play.example").unwrap()));
        // The cluster's list empties: theirs go, mine stays until my order ends.
        c.replace_shared(&[]).unwrap();
        assert_eq!(c.http01("theirs"), None);
        assert!(c.tls_alpn01("play.example").is_none());
        assert_eq!(c.http01("mine").as_deref(), Some("mine.thumb"));
        c.clear_own();
        assert_eq!(c.http01("mine"), None);
    }

    #[test]
    fn a_tls_alpn_answer_that_is_not_hex_is_refused() {
        let c = Challenges::default();
        let bad = ChallengeAnswer {
            kind: Challenge::TlsAlpn01,
            key: "a.example".into(),
            answer: "zz".into(),
        };
        assert!(c.install(&bad, false).is_err());
        assert!(c.tls_alpn01("a.example").is_none());
    }
}
