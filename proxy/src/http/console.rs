//! Which node's console an operator sees on the console listener. Open-source Nakama nodes
//! are independent, so each console shows its own node: an operator stays on one node (hashed
//! on their address, [`crate::nodes::pool::Pool::pick_console`]) unless they pick one with
//! `?node=<name>`, which a cookie then keeps for the console's own requests.

use http::header::{HeaderValue, COOKIE};
use http::request::Parts;
use std::net::IpAddr;

/// The cookie that keeps an operator's pick.
const COOKIE_NAME: &str = "nakama_edge_node";

/// An operator on the console listener: who they are, and the node they asked for.
pub(super) struct Operator {
    key: [u8; 16],
    key_len: usize,
    /// The node named by `?node=` (to be remembered) or by the cookie.
    wanted: Option<String>,
    /// Whether `wanted` came from `?node=`: the answer sets the cookie.
    picked_now: bool,
}

impl Operator {
    /// The operator behind `parts`, from `client`.
    pub(super) fn of(parts: &Parts, client: IpAddr) -> Operator {
        let (key, key_len) = match client {
            IpAddr::V4(v4) => {
                let mut key = [0u8; 16];
                key[..4].copy_from_slice(&v4.octets());
                (key, 4)
            }
            IpAddr::V6(v6) => (v6.octets(), 16),
        };
        let from_query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("node="))
                .filter(|name| is_node_name(name))
        });
        let from_cookie = || {
            parts
                .headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
                .filter(|name| is_node_name(name))
        };
        Operator {
            key,
            key_len,
            wanted: from_query.or_else(from_cookie).map(str::to_string),
            picked_now: from_query.is_some(),
        }
    }

    /// What the operator's node is hashed on.
    pub(super) fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    /// The node the operator asked for, if any.
    pub(super) fn wanted(&self) -> Option<&str> {
        self.wanted.as_deref()
    }

    /// The cookie that keeps `served` (the node that answered) when the operator picked it
    /// with this request.
    pub(super) fn cookie(&self, served: &str) -> Option<HeaderValue> {
        if !self.picked_now || self.wanted.as_deref() != Some(served) {
            return None;
        }
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={served}; Path=/; Secure; HttpOnly; SameSite=Strict"
        ))
        .ok()
    }
}

/// A node name as the config allows them (letters, digits, `-`, `_`, `.`); anything else is
/// no name.
fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, cookie: Option<&str>) -> Parts {
        let mut r = http::Request::builder().uri(uri);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.body(()).unwrap().into_parts().0
    }

    const OPERATOR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

    #[test]
    fn a_pick_by_query_is_remembered_and_a_cookie_is_honoured() {
        let picked = Operator::of(&parts("/?node=nakama-2", None), OPERATOR);
        assert_eq!(picked.wanted(), Some("nakama-2"));
        let cookie = picked.cookie("nakama-2").unwrap();
        assert!(cookie
            .to_str()
            .unwrap()
            .starts_with("nakama_edge_node=nakama-2; Path=/"));
        // Served by another node (the pick was down): nothing remembered.
        assert!(picked.cookie("nakama-1").is_none());

        let kept = Operator::of(
            &parts(
                "/v2/console/account",
                Some("a=b; nakama_edge_node=nakama-2"),
            ),
            OPERATOR,
        );
        assert_eq!(kept.wanted(), Some("nakama-2"));
        assert!(kept.cookie("nakama-2").is_none(), "already set");
        assert_eq!(kept.key(), &[10, 0, 0, 7]);
    }

    #[test]
    fn no_pick_or_a_malformed_one_is_no_pick() {
        for (uri, cookie) in [
            ("/", None),
            ("/?node=", None),
            ("/?node=a%20b", None),
            ("/", Some("nakama_edge_node=\"x\"")),
            ("/", Some("other_node=nakama-1")),
        ] {
            assert_eq!(
                Operator::of(&parts(uri, cookie), OPERATOR).wanted(),
                None,
                "{uri} {cookie:?}"
            );
        }
    }
}
