//! A stand-in Nakama node for nakama-edge's tests and benchmarks.
//!
//! It behaves like Nakama 3.x where the edge can see it (see FIELD-NOTES.md):
//!
//! * `GET /healthcheck` → `200 {}`; `GET /` → 200, empty body;
//! * `POST /v2/account/authenticate/device` (Basic server key) → a session, and
//!   `POST /v2/account/session/refresh` → a new token for the same user;
//! * `GET /ws?token=…` → 401 for a bad token, else a WebSocket that answers `ping` envelopes
//!   with `pong` and the `whoami` rpc with the node's name; WebSocket pings every 15 s;
//! * `POST|GET /v2/rpc/whoami` (Bearer or `http_key`) → the node's name and the client
//!   address headers it saw;
//! * gRPC over h2c: `/nakama.api.Nakama/Healthcheck` and `/nakama.api.Nakama/RpcFunc`;
//! * SIGTERM with a grace period: keeps serving (health stays green) for the grace, then
//!   closes its listeners and exits, WebSockets dying without a close frame.
//!
//! And, for tests only: `POST /standin/health/fail|pass` switches its health check, and
//! `GET /standin/stats` counts its open WebSockets.

pub mod token;
