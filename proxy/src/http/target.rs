//! Who the player is and which nodes their request may go to: the session token verified once
//! per request (for the budgets and the shard), and in shard mode the shard it belongs to
//! ([`crate::nodes::shards`] holds the rules of which node serves a shard).

use http::header::AUTHORIZATION;
use http::StatusCode;

use crate::limits::token::{self, Verified};
use crate::nodes::pool::Tried;
use crate::nodes::shards::Taker;
use crate::state::{Shared, Snapshot};

/// The player's session token, verified (`[nakama] session_key`), with the shard var read in
/// shard mode; `None` without a token, a key, or a token that verifies. Counted.
pub(super) fn session(
    shared: &Shared,
    snapshot: &Snapshot,
    parts: &http::request::Parts,
) -> Option<Verified> {
    let verifier = snapshot.verifier.as_ref()?;
    let token = token::session_token(
        parts.uri.query(),
        parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()),
    )?;
    let var = snapshot
        .shards
        .is_some()
        .then_some(snapshot.config.routing.shard_var.as_str());
    let verified = verifier.verify(token, unix_now(), var);
    shared.metrics.session_token(verified.map(|_| ()));
    verified.ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which nodes a request may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// Any: round-robin (API, gRPC), sticky by user (WebSocket), the operator's console node.
    Any,
    /// The shard the player's session var names: its node, else its standby, else nothing.
    Shard(usize),
    /// A player with no shard named (shard mode): the shard their user id (`user`, as a key)
    /// hashes to among those that can take work; `first`: that shard before any node was
    /// tried, worked out once per request.
    Hashed { user: u128, first: Option<usize> },
}

impl Target {
    /// The target of a request from the player `session` identifies, counted by shard.
    pub(super) fn of(snapshot: &Snapshot, session: Option<&Verified>) -> Target {
        let Some(shards) = &snapshot.shards else {
            return Target::Any;
        };
        let Some(session) = session else {
            shards.unsharded.requests.inc();
            return Target::Any;
        };
        let named = session.var.and_then(|v| shards.named(v.as_bytes()));
        let target = match named {
            Some(shard) => Target::Shard(shard),
            None => {
                let user = session.user.key();
                let first = shards.hashed(user, &snapshot.pool, Tried::default());
                Target::Hashed { user, first }
            }
        };
        if let Some(s) = target
            .shard(snapshot, Tried::default())
            .and_then(|i| shards.get(i))
        {
            s.series.requests.inc();
        }
        target
    }

    /// The shard of a shard target now, passing over the nodes in `tried`.
    pub(super) fn shard(self, snapshot: &Snapshot, tried: Tried) -> Option<usize> {
        let shards = snapshot.shards.as_ref()?;
        match self {
            Target::Any => None,
            Target::Shard(shard) => Some(shard),
            Target::Hashed { first, .. } if tried.is_empty() => first,
            Target::Hashed { user, .. } => shards.hashed(user, &snapshot.pool, tried),
        }
    }

    /// The node for a shard target, passing over `tried`; `any` picks for [`Target::Any`].
    pub(super) fn pick(
        self,
        snapshot: &Snapshot,
        tried: Tried,
        any: impl FnOnce() -> Option<usize>,
    ) -> Option<usize> {
        if self == Target::Any {
            return any();
        }
        let shards = snapshot.shards.as_ref()?;
        let shard = shards.get(self.shard(snapshot, tried)?)?;
        shard.taker(&snapshot.pool, tried).map(Taker::index)
    }

    /// Why no node took the request, when it is the shard's to say: a shard the player's var
    /// names, with no node that can take its new work (never sent to another shard's node).
    pub(super) fn unavailable(self, snapshot: &Snapshot, status: StatusCode) -> Option<String> {
        let Target::Shard(shard) = self else {
            return None;
        };
        if status != StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let shards = snapshot.shards.as_ref()?;
        Some(shards.get(shard)?.why_unavailable(&snapshot.pool))
    }
}
