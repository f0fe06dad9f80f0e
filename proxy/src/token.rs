//! Reading the Nakama user id out of a session token, without the key.
//!
//! A session token is a JWT (`header.payload.signature`, base64url); its payload carries
//! `uid`, the user id, stable across token refreshes and IP changes. The edge only needs it
//! as a hash key, so the signature is not checked here: Nakama checks it, and a forged `uid`
//! only chooses which node rejects the socket.

use base64::Engine;
use serde::Deserialize;

/// A user id copied out of a token, on the stack.
#[derive(Clone, Copy)]
pub struct UserId {
    bytes: [u8; 64],
    len: u8,
}

impl UserId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserId({})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Payloads larger than this are not tokens Nakama issued.
const MAX_PAYLOAD: usize = 2048;

#[derive(Deserialize)]
struct Claims<'a> {
    #[serde(borrow)]
    uid: Option<&'a str>,
}

/// The `uid` claim of `token`, if the token is a readable JWT that has one.
pub fn user_id(token: &str) -> Option<UserId> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_PAYLOAD * 4 / 3 + 4 {
        return None;
    }
    let mut buf = [0u8; MAX_PAYLOAD];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(payload.trim_end_matches('='), &mut buf)
        .ok()?;
    let claims: Claims = serde_json::from_slice(&buf[..n]).ok()?;
    let uid = claims.uid?.as_bytes();
    if uid.is_empty() || uid.len() > 64 {
        return None;
    }
    let mut bytes = [0u8; 64];
    bytes[..uid.len()].copy_from_slice(uid);
    Some(UserId {
        bytes,
        len: uid.len() as u8,
    })
}

/// The session token of a WebSocket upgrade: the `token` query parameter, else an
/// `Authorization: Bearer` header.
pub fn session_token<'a>(
    query: Option<&'a str>,
    authorization: Option<&'a [u8]>,
) -> Option<&'a str> {
    let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    from_query.or_else(|| {
        let value = std::str::from_utf8(authorization?).ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(payload)
        )
    }

    #[test]
    fn reads_uid() {
        let t =
            jwt(r#"{"tid":"x","uid":"0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d","usn":"u","exp":1}"#);
        assert_eq!(
            user_id(&t).unwrap().as_bytes(),
            b"0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d"
        );
    }

    #[test]
    fn unreadable_tokens_give_none() {
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "a.!!!.c",
            &jwt("not json"),
            &jwt(r#"{"usn":"x"}"#),
            &jwt(r#"{"uid":""}"#),
            &jwt(r#"{"uid":5}"#),
        ] {
            assert!(user_id(t).is_none(), "{t}");
        }
        let huge = jwt(&format!(r#"{{"uid":"{}"}}"#, "x".repeat(5000)));
        assert!(user_id(&huge).is_none());
    }

    #[test]
    fn finds_the_token() {
        assert_eq!(
            session_token(Some("lang=en&token=abc&status=true"), None),
            Some("abc")
        );
        assert_eq!(
            session_token(Some("lang=en"), Some(b"Bearer xyz")),
            Some("xyz")
        );
        assert_eq!(session_token(None, Some(b"bearer  xyz ")), Some("xyz"));
        assert_eq!(session_token(None, Some(b"Basic xyz")), None);
        assert_eq!(session_token(Some("mytoken=1"), None), None);
    }
}
