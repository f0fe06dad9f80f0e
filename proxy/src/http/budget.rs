//! The budgets a request spends before it goes to a node: requests per user (a verified
//! session token) or per address, and failed logins per account.

use std::net::IpAddr;

use crate::limits::token::UserId;
use crate::limits::{client_key, is_auth_path, retry_after_secs, Limited};
use crate::ops::metrics::RejectReason;
use crate::state::{Shared, Snapshot};

/// A request held back by a budget.
pub(crate) struct RateLimited {
    /// Seconds, for `Retry-After`.
    pub(crate) retry_after: u64,
}

/// The request budget: players' routes only (not ACME, redirects or the console). A request
/// whose session token verified (`user`) spends its user's budget; any other (logins, `http_key`
/// calls, unverifiable tokens) its address's. Rejections are counted.
pub(crate) fn request_budget(
    shared: &Shared,
    snapshot: &Snapshot,
    path: &str,
    user: Option<UserId>,
    client: IpAddr,
) -> Option<RateLimited> {
    let limits = &snapshot.limits;
    let (result, reason) = match user {
        Some(uid) => (limits.check_user(uid.key()), RejectReason::User),
        None => (
            limits.check_request(client_key(client), is_auth_path(path)),
            RejectReason::RateLimit,
        ),
    };
    match result {
        Ok(()) => None,
        Err(Limited::Rate(wait)) => {
            shared.metrics.rejected(reason);
            Some(RateLimited {
                retry_after: retry_after_secs(wait),
            })
        }
        Err(Limited::Connections) => None,
    }
}

/// A login (its body read first, `body`) for an account over its failed logins gets 429 until
/// its window ends; otherwise `Ok(Some(account))`: the account to count a 401 against.
/// `Ok(None)`: not a login, or no identifier in its body.
pub(crate) fn login_budget(
    shared: &Shared,
    snapshot: &Snapshot,
    path: &str,
    body: &[u8],
) -> Result<Option<u64>, RateLimited> {
    if !path.starts_with("/v2/account/authenticate/") {
        return Ok(None);
    }
    let logins = &snapshot.limits.logins;
    let Some(account) = logins.identifier(path, body) else {
        return Ok(None);
    };
    match logins.check(account) {
        Ok(()) => Ok(Some(account)),
        Err(wait) => {
            shared.metrics.rejected(RejectReason::Login);
            Err(RateLimited {
                retry_after: retry_after_secs(wait),
            })
        }
    }
}
