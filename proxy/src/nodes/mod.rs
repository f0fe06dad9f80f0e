//! The Nakama nodes: which there are (config and DNS), how they are (health checks, drains),
//! which one a request goes to, and the connections kept open to them.
//!
//! | module | concern |
//! | --- | --- |
//! | [`pool`] | nodes, their state, and node selection |
//! | [`health_check`] | active health checks, and the first round before serving |
//! | [`drains`] | runtime drains, kept in `server.state_dir` across restarts and upgrades |
//! | [`discovery`] | nodes found in DNS (`[[discover]]`): lookups and the registry of what they found |
//! | [`shards`] | shard mode (open-source Nakama): the node of each player's shard, its standby |
//! | [`upstream`] | connections to nodes: hyper's client, kept per worker thread |
//! | [`retry_budget`] | how many requests may be retried on another node |

pub mod discovery;
pub mod drains;
pub mod health_check;
pub mod pool;
pub mod retry_budget;
pub mod shards;
pub mod upstream;
