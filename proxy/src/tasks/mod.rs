//! Background tasks: each acts on the shared state ([`crate::state::Shared`]) from outside it.
//! Nothing the state is made of imports a task, so no import circles back: data modules
//! (pool, limits, drains, discovery's registry, the cluster link) never see `Shared`, and the
//! loops that update them live here.
//!
//! | task | what it keeps up to date |
//! | --- | --- |
//! | [`acme`] | the certificate: obtained and renewed (the work itself is in `nakama-edge-certs`) |
//! | [`cluster_sync`] | the shared state and the cluster database, in step (`[cluster]`) |
//! | [`discovery`] | the nodes found in DNS: a watch per `[[discover]]` entry, the sweep of departed ones |
//! | [`drains_watch`] | drains another process of this edge wrote (an upgrade's overlap) |
//! | [`graceful_close`] | WebSockets closed with close frames on shutdown |
//! | [`limits_purge`] | the limiters, forgetting clients whose budgets are full again |

pub mod acme;
pub mod cluster_sync;
pub mod discovery;
pub mod drains_watch;
pub mod graceful_close;
pub mod limits_purge;
