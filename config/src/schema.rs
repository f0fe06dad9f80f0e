//! The TOML file as written: every field optional and carrying its position, so that
//! validation can say where a problem is. [`crate::validate`] turns this into [`crate::Config`].

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Option<Spanned<T>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub server: RawServer,
    pub listeners: RawListeners,
    pub tls: S<RawTls>,
    pub acme: S<RawAcme>,
    pub nodes: Vec<RawNode>,
    pub health_check: RawHealthCheck,
    pub routing: RawRouting,
    pub firewall: RawFirewall,
    pub rate_limit: RawRateLimit,
    pub timeouts: RawTimeouts,
    pub log: RawLog,
    pub cluster: S<RawCluster>,
    pub nakama: S<RawNakama>,
    pub discover: Vec<RawDiscover>,
    pub shards: Vec<RawShard>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShard {
    pub name: Spanned<String>,
    pub node: Spanned<String>,
    #[serde(default)]
    pub standby: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscover {
    pub name: Spanned<String>,
    #[serde(default)]
    pub dns: S<String>,
    #[serde(default)]
    pub srv: S<String>,
    #[serde(default)]
    pub port: S<i64>,
    #[serde(default)]
    pub grpc_port: S<i64>,
    #[serde(default)]
    pub console_port: S<i64>,
    #[serde(default)]
    pub weight: S<i64>,
    #[serde(default)]
    pub interval: S<String>,
    #[serde(default)]
    pub resolvers: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNakama {
    #[serde(default)]
    pub session_key: S<OneOrMany>,
    #[serde(default)]
    pub session_key_file: S<String>,
}

/// A string, or a list of them (a key and the one it replaces, during a rotation).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub database: Spanned<String>,
    #[serde(default)]
    pub database_password_file: S<String>,
    #[serde(default)]
    pub database_ca: S<String>,
    #[serde(default)]
    pub name: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServer {
    pub threads: S<i64>,
    pub grace_period: S<String>,
    pub upgrade_socket: S<String>,
    pub state_dir: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawListeners {
    pub https: S<String>,
    pub http: S<String>,
    pub http_redirect: Option<bool>,
    pub admin: S<String>,
    pub console: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub domains: Spanned<Vec<Spanned<String>>>,
    pub directory: Spanned<String>,
    #[serde(default)]
    pub contact: Vec<Spanned<String>>,
    #[serde(default)]
    pub challenge: S<String>,
    pub state_dir: Spanned<String>,
    #[serde(default)]
    pub directory_ca: S<String>,
    #[serde(default)]
    pub retry_backoff: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    #[serde(default)]
    pub grpc: S<String>,
    #[serde(default)]
    pub console: S<String>,
    #[serde(default)]
    pub weight: S<i64>,
    #[serde(default)]
    pub drain: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawHealthCheck {
    pub path: S<String>,
    pub interval: S<String>,
    pub timeout: S<String>,
    pub unhealthy_threshold: S<i64>,
    pub healthy_threshold: S<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRouting {
    pub websocket_path: S<String>,
    pub sticky_key: S<String>,
    pub drain_timeout: S<String>,
    pub mode: S<String>,
    pub shard_var: S<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFirewall {
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Vec<Spanned<String>>,
    pub console_allow: Vec<Spanned<String>>,
    pub trusted_proxies: Vec<Spanned<String>>,
    pub admin_allow: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRateLimit {
    pub requests_per_second: S<i64>,
    pub burst: S<i64>,
    pub auth_requests_per_minute: S<i64>,
    pub connections_per_ip: S<i64>,
    pub new_connections_per_second: S<i64>,
    pub login_failures_per_minute: S<i64>,
    pub websocket_messages_per_second: S<i64>,
    pub websocket_message_burst: S<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    pub level: S<String>,
    pub format: S<String>,
    pub access_log: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTimeouts {
    pub tls_handshake: S<String>,
    pub request_header: S<String>,
    pub http_idle: S<String>,
    pub websocket_idle: S<String>,
    pub upstream_connect: S<String>,
    pub upstream_read: S<String>,
    pub request_body: S<String>,
}
