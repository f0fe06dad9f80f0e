//! What operators see and touch: the admin API, metrics, logs, config reload, and the
//! allocator's giving memory back.
//!
//! | module | concern |
//! | --- | --- |
//! | [`admin`] | the admin API |
//! | [`metrics`] | Prometheus metrics |
//! | [`logging`] | log level and format, the access log |
//! | [`reload`] | file watching and SIGHUP |
//! | [`allocator`] | giving memory back after a burst: worker threads flush their allocator caches |

pub mod admin;
pub mod allocator;
pub mod logging;
pub mod metrics;
pub mod reload;
