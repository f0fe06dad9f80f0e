//! The Nakama user behind a session token.
//!
//! A session token is a JWT (`header.payload.signature`, base64url); its payload carries
//! `uid`, the user id, stable across token refreshes and IP changes, `exp`, and `vrs`, the
//! session vars a client set at authentication (omitted when empty).
//!
//! * [`user_id`] reads the `uid` without the key: enough to choose a WebSocket's node (Nakama
//!   checks the signature, and a forged `uid` only chooses which node rejects the socket).
//! * [`Verifier::verify`] checks the HS256 signature against Nakama's
//!   `session.encryption_key` (`[nakama] session_key`, several during a rotation) and the
//!   expiry: only a token that passes identifies a user to the rate limits. Nothing is
//!   allocated: the keyed MAC state is made once per config, the payload decoded on the
//!   stack.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

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

/// A token's three parts, if it has exactly three.
fn parts(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.split('.');
    let (header, payload, sig) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some((header, payload, sig))
}

/// A short string copied out of a token, on the stack: a session var's value.
#[derive(Clone, Copy)]
pub struct Short {
    bytes: [u8; 64],
    len: u8,
}

impl Short {
    fn of(text: &str) -> Option<Short> {
        let len = text.len();
        if len > 64 {
            return None;
        }
        let mut bytes = [0u8; 64];
        bytes[..len].copy_from_slice(text.as_bytes());
        Some(Short {
            bytes,
            len: len as u8,
        })
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// What a token's payload says: `uid`, `exp`, and the value of one session var in `vrs`.
struct Claims {
    uid: Option<UserId>,
    exp: Option<u64>,
    var: Option<Short>,
}

/// Reads [`Claims`], looking in `vrs` for the var `.0` only. Nothing is allocated: keys and
/// values are looked at where they lie (or in serde_json's scratch, when they have escapes)
/// and what is kept is copied onto the stack.
struct ClaimsOf<'v>(Option<&'v str>);

impl<'de> serde::de::DeserializeSeed<'de> for ClaimsOf<'_> {
    type Value = Claims;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Claims, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ClaimsOf<'_> {
    type Value = Claims;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JWT payload")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut claims = Claims {
            uid: None,
            exp: None,
            var: None,
        };
        while let Some(key) = map.next_key_seed(Key(&["uid", "exp", "vrs"]))? {
            match (key, self.0) {
                (Some(0), _) => claims.uid = map.next_value_seed(Text)?.and_then(UserId::of),
                (Some(1), _) => claims.exp = map.next_value()?,
                (Some(2), Some(var)) => claims.var = map.next_value_seed(VarOf(var))?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(claims)
    }
}

/// The value of var `.0` in `vrs`, an object of strings.
struct VarOf<'v>(&'v str);

impl<'de> serde::de::DeserializeSeed<'de> for VarOf<'_> {
    type Value = Option<Short>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Short>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for VarOf<'_> {
    type Value = Option<Short>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("session vars")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<Option<Short>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key_seed(Key(&[self.0]))? {
            if key.is_some() {
                found = map.next_value_seed(Text)?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A map key: its index among `.0`, `None` for any other.
struct Key<'k>(&'k [&'k str]);

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for Key<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| *k == key))
    }
}

/// A string value copied onto the stack; `None` when longer than 64 bytes.
struct Text;

impl<'de> serde::de::DeserializeSeed<'de> for Text {
    type Value = Option<Short>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Short>, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for Text {
    type Value = Option<Short>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Option<Short>, E> {
        Ok(Short::of(text))
    }
}

impl UserId {
    fn of(short: Short) -> Option<UserId> {
        (short.len > 0).then_some(UserId {
            bytes: short.bytes,
            len: short.len,
        })
    }
}

/// The claims of a JWT payload, decoded on the stack; `var`: the session var to read.
fn claims(payload: &str, var: Option<&str>) -> Option<Claims> {
    if payload.len() > MAX_PAYLOAD * 4 / 3 + 4 {
        return None;
    }
    let mut buf = [0u8; MAX_PAYLOAD];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(payload.trim_end_matches('='), &mut buf)
        .ok()?;
    let mut de = serde_json::Deserializer::from_slice(&buf[..n]);
    let claims = serde::de::DeserializeSeed::deserialize(ClaimsOf(var), &mut de).ok()?;
    de.end().ok()?;
    claims.uid.is_some().then_some(claims)
}

/// The `uid` claim of `token`, if the token is a readable JWT that has one (not verified).
pub fn user_id(token: &str) -> Option<UserId> {
    let (_header, payload, _sig) = parts(token)?;
    claims(payload, None)?.uid
}

impl UserId {
    /// The id as a limiter key: a Nakama user id is a UUID, whose 128 bits are the key;
    /// anything else is hashed to 128 bits.
    pub fn key(&self) -> u128 {
        let text = self.as_bytes();
        let hex: Option<u128> = (text.len() == 36)
            .then(|| {
                text.iter()
                    .filter(|&&b| b != b'-')
                    .try_fold(0u128, |acc, &b| {
                        (b as char).to_digit(16).map(|d| (acc << 4) | u128::from(d))
                    })
            })
            .flatten();
        hex.unwrap_or_else(|| {
            // FNV-1a, twice over: a key, not a security measure (the token was verified).
            let fnv = |seed: u64| {
                text.iter().fold(seed, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                })
            };
            (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4))
        })
    }
}

/// Verifies session tokens with Nakama's `session.encryption_key`s.
#[derive(Clone)]
pub struct Verifier {
    /// One keyed HMAC-SHA256 state per key, made once: each check starts from a copy.
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(f, "Verifier({} key(s))", self.keys.len())
    }
}

/// The length of an HS256 signature.
const SIGNATURE: usize = 32;

impl Verifier {
    /// A verifier for `keys`; `None` when there is none.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Verifier> {
        let keys: Vec<Hmac<Sha256>> = keys
            .into_iter()
            .filter_map(|k| Hmac::<Sha256>::new_from_slice(k.as_bytes()).ok())
            .collect();
        (!keys.is_empty()).then_some(Verifier { keys })
    }

    /// The user `token` identifies, and the value of its session var `var`: signed (HS256)
    /// with one of the keys, and not expired at `now` (Unix seconds). Anything else identifies
    /// nobody, and says why.
    pub fn verify(&self, token: &str, now: u64, var: Option<&str>) -> Result<Verified, Refused> {
        let (header, payload, sig) = parts(token).ok_or(Refused::Malformed)?;
        let mut signature = [0u8; SIGNATURE + 2];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(sig.trim_end_matches('='), &mut signature)
            .map_err(|_| Refused::Malformed)?;
        if n != SIGNATURE {
            return Err(Refused::Malformed);
        }
        let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
        let genuine = self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(signed);
            mac.verify_slice(&signature[..SIGNATURE]).is_ok()
        });
        if !genuine {
            return Err(Refused::BadSignature);
        }
        let claims = claims(payload, var).ok_or(Refused::Malformed)?;
        match (claims.uid, claims.exp) {
            (Some(user), Some(exp)) if exp > now => Ok(Verified {
                user,
                var: claims.var,
            }),
            (None, _) => Err(Refused::Malformed),
            _ => Err(Refused::Expired),
        }
    }
}

/// What a verified session token says.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    /// The user.
    pub user: UserId,
    /// The session var asked for, if the token has it (and it is at most 64 bytes).
    pub var: Option<Short>,
}

/// Why a session token identifies nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Signed with none of the keys (or changed since): forged, or `[nakama] session_key` is
    /// not Nakama's `session.encryption_key`.
    BadSignature,
    /// Past its `exp` (or without one).
    Expired,
    /// Not a JWT of Nakama's shape.
    Malformed,
}

impl Refused {
    /// Every reason, in the order of their discriminants.
    pub const ALL: [Refused; 3] = [Refused::BadSignature, Refused::Expired, Refused::Malformed];

    /// The `result` label of `nakama_edge_session_tokens_total` (`verified` for the others).
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::BadSignature => "bad_signature",
            Refused::Expired => "expired",
            Refused::Malformed => "malformed",
        }
    }
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

    /// A token as Nakama signs it: HS256 over `header.payload` with `key`.
    fn signed(key: &str, payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "{}.{}",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(payload)
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(unsigned.as_bytes());
        format!("{unsigned}.{}", e.encode(mac.finalize().into_bytes()))
    }

    const UID: &str = "0b0e7d9a-1b7b-4b6e-9d1e-1f6d2a3b4c5d";

    #[test]
    fn only_a_token_signed_with_a_key_and_not_expired_identifies_a_user() {
        let v = Verifier::new(["old-key", "new-key"]).unwrap();
        let claims = format!(r#"{{"tid":"t","uid":"{UID}","usn":"u","exp":2000}}"#);
        for key in ["old-key", "new-key"] {
            let verified = v
                .verify(&signed(key, &claims), 1999, Some("shard"))
                .unwrap();
            assert_eq!(verified.user.as_bytes(), UID.as_bytes());
            assert!(verified.var.is_none());
        }
        assert_eq!(
            v.verify(&signed("other-key", &claims), 1999, None).err(),
            Some(Refused::BadSignature),
            "forged"
        );
        assert_eq!(
            v.verify(&signed("new-key", &claims), 2000, None).err(),
            Some(Refused::Expired)
        );
        let no_exp = format!(r#"{{"uid":"{UID}"}}"#);
        assert_eq!(
            v.verify(&signed("new-key", &no_exp), 1, None).err(),
            Some(Refused::Expired),
            "no expiry"
        );
        // A payload changed after signing.
        let good = signed("new-key", &claims);
        let mut parts: Vec<&str> = good.split('.').collect();
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let other = e.encode(claims.replace("0b0e", "ffff"));
        parts[1] = &other;
        assert_eq!(
            v.verify(&parts.join("."), 1999, None).err(),
            Some(Refused::BadSignature),
            "tampered"
        );
        for junk in [
            "",
            "a.b",
            "a.b.c",
            &format!("{}.x", &good[..good.rfind('.').unwrap()]),
        ] {
            assert_eq!(
                v.verify(junk, 0, None).err(),
                Some(Refused::Malformed),
                "{junk}"
            );
        }
        assert!(Verifier::new(Vec::<&str>::new()).is_none());
        assert_eq!(format!("{v:?}"), "Verifier(2 key(s))");
    }

    #[test]
    fn a_verified_token_gives_the_session_var_asked_for() {
        let v = Verifier::new(["k"]).unwrap();
        let var = |payload: &str, name: &str| {
            let verified = v.verify(&signed("k", payload), 1, Some(name)).unwrap();
            verified
                .var
                .map(|s| String::from_utf8(s.as_bytes().to_vec()).unwrap())
        };
        let with_vars =
            format!(r#"{{"uid":"{UID}","vrs":{{"mode":"x","shard":"eu-ranked"}},"exp":9}}"#);
        assert_eq!(var(&with_vars, "shard").as_deref(), Some("eu-ranked"));
        assert_eq!(var(&with_vars, "mode").as_deref(), Some("x"));
        assert_eq!(var(&with_vars, "region"), None);
        let escaped = format!(r#"{{"vrs":{{"sh\u0061rd":"e\u0075"}},"uid":"{UID}","exp":9}}"#);
        assert_eq!(var(&escaped, "shard").as_deref(), Some("eu"));
        // Nakama omits vrs when a player has no vars.
        assert_eq!(var(&format!(r#"{{"uid":"{UID}","exp":9}}"#), "shard"), None);
        let long = format!(
            r#"{{"uid":"{UID}","vrs":{{"shard":"{}"}},"exp":9}}"#,
            "s".repeat(65)
        );
        assert_eq!(var(&long, "shard"), None, "longer than any shard name");
        // Not asked for: vrs is not looked at.
        let verified = v.verify(&signed("k", &with_vars), 1, None).unwrap();
        assert!(verified.var.is_none());
        assert_eq!(verified.user.as_bytes(), UID.as_bytes());
    }

    #[test]
    fn a_uuid_is_its_own_key_and_other_ids_are_hashed() {
        let t = jwt(&format!(r#"{{"uid":"{UID}"}}"#));
        assert_eq!(
            user_id(&t).unwrap().key(),
            0x0b0e7d9a_1b7b_4b6e_9d1e_1f6d2a3b4c5d
        );
        let a = user_id(&jwt(r#"{"uid":"player-1"}"#)).unwrap().key();
        let b = user_id(&jwt(r#"{"uid":"player-2"}"#)).unwrap().key();
        assert_ne!(a, b);
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
