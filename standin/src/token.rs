//! Nakama-shaped session tokens: HS256 JWTs with `tid`, `uid`, `usn`, `exp`, `iat` (and `vrs`
//! when a session has vars, which the stand-in's never have).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The user id Nakama would give a device: stable for the device id, the same on every node
/// (a real cluster shares one database).
pub fn user_id_for_device(device_id: &str) -> String {
    let h = Sha256::digest(device_id.as_bytes());
    let hex: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Issue a token of session `tid` for `uid` with session `vars`, valid for `ttl_secs`. As
/// Nakama's: no `vrs` when there are no session vars, and the same claims in the same second
/// make the same token.
pub fn issue(
    key: &str,
    tid: &str,
    uid: &str,
    username: &str,
    vars: &serde_json::Map<String, serde_json::Value>,
    ttl_secs: u64,
) -> String {
    let iat = now();
    let header = B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let mut claims = serde_json::json!({
        "tid": tid,
        "uid": uid,
        "usn": username,
    });
    if !vars.is_empty() {
        claims["vrs"] = vars.clone().into();
    }
    claims["exp"] = (iat + ttl_secs).into();
    claims["iat"] = iat.into();
    let payload = B64.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let sig = sign(key, &signing_input);
    format!("{signing_input}.{sig}")
}

fn sign(key: &str, input: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(input.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// The claims of a token signed with `key` and not expired.
pub fn verify(key: &str, token: &str) -> Option<serde_json::Value> {
    let (signing_input, sig) = token.rsplit_once('.')?;
    let (_, payload) = signing_input.split_once('.')?;
    let expected = sign(key, signing_input);
    if expected.len() != sig.len() || !expected.bytes().zip(sig.bytes()).all(|(a, b)| a == b) {
        return None;
    }
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    (claims["exp"].as_u64()? > now()).then_some(claims)
}
