//! Where players come in: the accept path (firewall before anything else, the PROXY protocol
//! header from trusted load balancers, players' TLS on rustls), and a player's connection
//! with its deadlines and its slot, until it closes.
//!
//! | module | concern |
//! | --- | --- |
//! | [`accept`] | the one accept path: firewall, TLS, then HTTP |
//! | [`firewall`] | CIDR allow/deny, decided right after `accept()` |
//! | [`proxy_protocol`] | PROXY protocol v1/v2 from trusted load balancers |
//! | [`player_tls`] | a player's TLS stream: rustls over the socket |
//! | [`client_conn`] | a player's connection: its transport, head/idle/WebSocket deadlines (clock, timer, head end), a WebSocket's close frame, its slot and lingering close |
//! | [`closing`] | a listener's signal to its connections to close what is idle (shutdown) |

pub mod accept;
pub mod client_conn;
pub mod closing;
pub mod firewall;
pub mod player_tls;
pub mod proxy_protocol;
