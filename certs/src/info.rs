//! What a certificate says about itself: validity and names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::load::CertError;

/// The facts of a leaf certificate that renewal decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// DNS names in the subject alternative names, lowercase.
    pub names: Vec<String>,
}

fn time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH
    }
}

impl CertInfo {
    /// Read the facts of `leaf`.
    pub fn of(leaf: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| CertError::Parse(e.to_string()))?;
        let validity = cert.validity();
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(CertInfo {
            not_before: time(validity.not_before),
            not_after: time(validity.not_after),
            names,
        })
    }

    /// Whether every one of `domains` is among the certificate's names.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains
            .iter()
            .all(|d| self.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
    }

    /// Whether the certificate is valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// Seconds since the Unix epoch at which it expires.
    pub fn expiry_timestamp(&self) -> f64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}
