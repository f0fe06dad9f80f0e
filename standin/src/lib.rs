//! A stand-in Nakama node for nakama-edge's tests and benchmarks.
//!
//! It behaves like Nakama 3.x where the edge can see it (`proxy/tests/nakama_real.rs` asks
//! both the same questions and compares the answers):
//!
//! * `GET /healthcheck` → `200 {}`; `GET /` → 200, empty body;
//! * `POST /v2/account/authenticate/device` (Basic server key) → a session, and
//!   `POST /v2/account/session/refresh` → a new token for the same user;
//! * `GET /ws?token=…` → 401 for a bad token, else a WebSocket that answers `ping` envelopes
//!   with `pong` and the `whoami` rpc with the node's name; WebSocket pings every 15 s;
//! * `POST|GET /v2/rpc/whoami` (Bearer or `http_key`) → the node's name, the client address
//!   as Nakama takes it (`client_ip`: the first `X-Forwarded-For` entry, else the peer; never
//!   `X-Real-IP` or `CF-Connecting-IP`) and the address headers it saw;
//! * a path it does not serve → 404 `{"code":5,"message":"Not Found"}`;
//! * session tokens as Nakama's: token and refresh token of one `tid`, no `vrs` without
//!   session vars, and a refresh within the same second gives the same tokens;
//! * gRPC over h2c, on the API port - 1 unless `--grpc` says otherwise:
//!   `/nakama.api.Nakama/Healthcheck` and `/nakama.api.Nakama/RpcFunc`;
//! * a keep-alive HTTP/1.1 connection that waits 60 s for its next request is closed, as
//!   Nakama's `socket.idle_timeout_ms` closes it (`--idle-timeout SECS` to shorten it);
//! * SIGTERM: exits at once (Nakama with no authoritative match running); with
//!   `--shutdown-grace` (Nakama with one, for `shutdown_grace_sec`) keeps serving, health
//!   green, for the grace first. WebSockets die without a close frame (players see 1006).
//!
//! `proxy/tests/nakama_real.rs` checks these against the real server.
//!
//! And, for tests only: `POST /standin/health/fail|pass` switches its health check, and
//! `GET /standin/stats` counts its open WebSockets.

pub mod token;
