//! The admin API (`listeners.admin`, plain HTTP): metrics, liveness, readiness, nodes, drain.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when listeners are bound, the certificate is not a placeholder and a node is routable; else 503 and why |
//! | `GET /nodes` | JSON: name, address, discovered_by (the `[[discover]]` entry, for a node found in DNS), state, health, drained_by, http_in_flight, websockets (with `[cluster]`: every live edge's, summed; `this_edge` has this one's) |
//! | `GET /cluster` | JSON: the live edges (name, version, last_seen, routing_digest, self); 404 without `[cluster]` |
//! | `POST /nodes/{name}/drain`, `/undrain` | runtime drain, saved (in the cluster database, whence every edge applies it, and in `server.state_dir`) before it applies; 404 for an unknown node; 503 when the cluster database is unreachable and 500 when `state_dir` cannot be written (nothing changed) |
//!
//! Either `drain = true` in the config file or a runtime drain drains a node; `undrain` lifts
//! the runtime one only, and the node's view then still says `"drained_by": ["config"]`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;

use crate::cluster::ClusterLink;
use crate::nodes::pool::{DrainedBy, Health, Node, NodeState, Tried};
use crate::nodes::shards::{Shards, Taker};
use crate::state::{DrainError, Shared};
use nakama_edge_cluster::edges::NodeCounts;

/// Who may use the admin API (`firewall.admin_allow`, loopback by default), decided right after
/// `accept()`; others are closed and counted as `reason="firewall"`.
pub struct AdminFilter {
    shared: Arc<Shared>,
}

impl AdminFilter {
    /// The filter of the admin listener.
    pub fn new(shared: Arc<Shared>) -> Self {
        AdminFilter { shared }
    }
}

impl std::fmt::Debug for AdminFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminFilter").finish_non_exhaustive()
    }
}

#[async_trait]
impl pingora_core::listeners::ConnectionFilter for AdminFilter {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        let allowed = addr.is_none_or(|a| self.shared.snapshot().firewall.allows_admin(a.ip()));
        if !allowed {
            self.shared
                .metrics
                .rejected(crate::ops::metrics::RejectReason::Firewall);
        }
        allowed
    }
}

/// The admin API.
pub struct AdminApi {
    shared: Arc<Shared>,
}

impl AdminApi {
    /// The admin API over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        AdminApi { shared }
    }
}

/// One node as `GET /nodes` shows it.
#[derive(Serialize)]
pub struct NodeView<'a> {
    name: &'a str,
    address: String,
    /// The `[[discover]]` entry that found the node; absent for a `[[nodes]]` entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    discovered_by: Option<&'a str>,
    state: NodeState,
    health: Health,
    drained_by: DrainedBy,
    /// Requests in flight to the node: through every live edge of the cluster.
    http_in_flight: i64,
    /// WebSockets open to the node: through every live edge of the cluster.
    websockets: i64,
    /// This edge's own counts (with `[cluster]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    this_edge: Option<NodeCounts>,
    /// Shard mode: the shard the node holds (`null`: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<Option<&'a str>>,
    /// Shard mode: the shards the node stands by for.
    #[serde(skip_serializing_if = "Option::is_none")]
    standby_for: Option<Vec<&'a str>>,
}

impl<'a> NodeView<'a> {
    fn of(node: &'a Node, cluster: Option<&ClusterLink>) -> Self {
        let here = NodeCounts {
            http_in_flight: node.runtime.http_in_flight(),
            websockets: node.runtime.websockets(),
        };
        let others = cluster.map_or_else(NodeCounts::default, |c| c.others(&node.config.name));
        NodeView {
            name: &node.config.name,
            address: node.config.address.to_string(),
            discovered_by: node.origin.discovered_by(),
            state: node.runtime.state(),
            health: node.runtime.health(),
            drained_by: node.runtime.drained_by(),
            http_in_flight: here.http_in_flight + others.http_in_flight,
            websockets: here.websockets + others.websockets,
            this_edge: cluster.map(|_| here),
            shard: None,
            standby_for: None,
        }
    }

    /// With the shards node `i` of the pool holds and stands by for (shard mode).
    fn in_shards(mut self, i: usize, shards: Option<&'a Shards>) -> Self {
        if let Some((holds, stands_by)) = shards.map(|s| s.of_node(i)) {
            self.shard = Some(holds);
            self.standby_for = Some(stands_by);
        }
        self
    }
}

/// One live edge as `GET /cluster` shows it.
#[derive(Serialize)]
struct EdgeView<'a> {
    name: &'a str,
    version: &'a str,
    /// Unix seconds, the database's clock.
    last_seen: i64,
    routing_digest: &'a str,
    #[serde(rename = "self")]
    is_self: bool,
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        format!("{body}\n").into_bytes(),
    )
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Vec<u8>> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode"),
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        let snapshot = self.shared.snapshot();
        let pool = &snapshot.pool;
        let cluster = self.shared.cluster.as_deref();
        let get = method == Method::GET || method == Method::HEAD;
        match path.as_str() {
            "/metrics" if get => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.metrics.render(
                    pool,
                    &snapshot.config.discover,
                    self.shared.served_certificate().as_ref(),
                    snapshot.shards.iter().flat_map(|shards| {
                        shards.iter().map(|s| {
                            let taker = s.taker(pool, Tried::default());
                            (&*s.name, matches!(taker, Some(Taker::Standby(_))))
                        })
                    }),
                ),
            ),
            "/healthz" if get => text(StatusCode::OK, "ok"),
            "/readyz" if get => match self.shared.not_ready() {
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
                None => text(StatusCode::OK, "ready"),
            },
            "/nodes" if get => json(
                StatusCode::OK,
                &pool
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| NodeView::of(n, cluster).in_shards(i, snapshot.shards.as_ref()))
                    .collect::<Vec<_>>(),
            ),
            "/cluster" if get => match cluster {
                Some(link) => {
                    let live = link.live_edges();
                    let view: Vec<EdgeView> = live
                        .iter()
                        .map(|e| EdgeView {
                            name: &e.heartbeat.name,
                            version: &e.heartbeat.version,
                            last_seen: e.last_seen,
                            routing_digest: &e.heartbeat.routing_digest,
                            is_self: e.heartbeat.name == link.name,
                        })
                        .collect();
                    json(StatusCode::OK, &view)
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "no [cluster] in the config: this edge is alone",
                ),
            },
            "/metrics" | "/healthz" | "/readyz" | "/nodes" | "/cluster" => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => match drain_request(&path) {
                Some((name, drain)) if method == Method::POST => {
                    let name = name.as_str();
                    match (self.shared.set_drain(name, drain).await, pool.by_name(name)) {
                        (Ok(Some(())), Some(node)) => {
                            let view = NodeView::of(node, cluster);
                            if !drain && view.drained_by.config {
                                tracing::info!(node = name, "runtime drain lifted; the node stays drained by `drain = true` in the config file");
                            } else {
                                tracing::info!(
                                    node = name,
                                    drain,
                                    "drain changed through the admin API"
                                );
                            }
                            json(StatusCode::OK, &view)
                        }
                        (Ok(_), _) => {
                            text(StatusCode::NOT_FOUND, &format!("unknown node {name:?}"))
                        }
                        (Err(e @ DrainError::Cluster(_)), _) => {
                            tracing::warn!(node = name, drain, "drain refused: {e}");
                            text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
                        }
                        (Err(e), _) => {
                            tracing::error!(
                                node = name,
                                drain,
                                "cannot save a drain, nothing changed: {e}"
                            );
                            text(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                &format!("cannot save the drain, nothing changed: {e}"),
                            )
                        }
                    }
                }
                Some(_) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
                None => text(StatusCode::NOT_FOUND, "not found"),
            },
        }
    }
}

/// `/nodes/{name}/drain` → `(name, true)`, `/nodes/{name}/undrain` → `(name, false)`. The
/// name may be percent-encoded (a discovered IPv6 node is `k8s-[2001:db8::7]:7350`).
fn drain_request(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/nodes/")?;
    let (name, action) = rest.rsplit_once('/')?;
    let name = percent_decode(name)?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    match action {
        "drain" => Some((name, true)),
        "undrain" => Some((name, false)),
        _ => None,
    }
}

/// `%XX` escapes decoded; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::drain_request;

    #[test]
    fn drain_paths() {
        let request = |name: &str, drain| Some((name.to_string(), drain));
        assert_eq!(
            drain_request("/nodes/nakama-1/drain"),
            request("nakama-1", true)
        );
        assert_eq!(
            drain_request("/nodes/nakama-1/undrain"),
            request("nakama-1", false)
        );
        assert_eq!(
            drain_request("/nodes/k8s-127.0.0.11:7350/drain"),
            request("k8s-127.0.0.11:7350", true)
        );
        assert_eq!(
            drain_request("/nodes/k8s-%5B2001:db8::7%5D:7350/drain"),
            request("k8s-[2001:db8::7]:7350", true)
        );
        assert_eq!(drain_request("/nodes/a%2Fb/drain"), None);
        assert_eq!(drain_request("/nodes/a%2/drain"), None);
        assert_eq!(drain_request("/nodes//drain"), None);
        assert_eq!(drain_request("/nodes/a/b/drain"), None);
        assert_eq!(drain_request("/nodes/a/stop"), None);
    }
}
