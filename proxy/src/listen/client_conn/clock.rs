//! The connection's side of its deadlines: which phase it has seen, when that phase's clock
//! started, whether a head has begun and where it ends, and the timer armed for the deadline
//! (the table in the [module doc](super)).

use std::io;
use std::task::Context;
use std::time::Duration;

use tokio::time::Instant;

use super::head_end::HeadEnd;
use super::shared::{ConnState, Phase};
use super::timer::Timer;

/// The deadline of the phase the connection is in, kept by the task that reads it.
pub(super) struct Clock {
    seen_turn: u32,
    seen_phase: Phase,
    /// When the current phase's clock started: the last answer's end, the first byte of a
    /// head, or a WebSocket's last client byte.
    since: Instant,
    /// A head has begun (or pipelined bytes wait): `request_header` from `since`.
    head_begun: bool,
    /// Where the head being read ends (HTTP/1.x); `None` for HTTP/2.
    head: Option<HeadEnd>,
    timer: Timer,
}

/// A deadline: `strict` ones are an error once passed; the others only wake the connection for
/// a look (HTTP/1.x, while a request is proxied or its head is complete).
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    strict: bool,
}

/// How often an HTTP/1.x connection looks at its phase while a request is proxied: as often
/// as the idle deadline that follows an answer (a pipelined head's shorter one needs no look:
/// hyper reads the pipelined bytes it holds, and the head deadline is set then).
fn look(state: &ConnState) -> Duration {
    state.http_idle()
}

impl Clock {
    /// A new connection in `phase`; `h2` has no head deadlines here.
    pub fn new(phase: Phase, h2: bool) -> Clock {
        Clock {
            seen_turn: 0,
            seen_phase: phase,
            since: Instant::now(),
            // A new connection's first head has request_header from the accept.
            head_begun: true,
            head: (!h2).then(HeadEnd::default),
            timer: Timer::new(),
        }
    }

    /// Catch up with phase changes made by the request path.
    pub fn sync(&mut self, state: &ConnState) -> Phase {
        let turn = state.turn();
        if turn == self.seen_turn {
            return self.seen_phase;
        }
        self.seen_turn = turn;
        let phase = state.phase();
        self.seen_phase = phase;
        // A new phase may be polled from another task (a WebSocket's splice).
        self.timer.forget_waker();
        // Timed from the phase change itself: hyper may read again only later.
        self.since = state.since();
        if phase == Phase::AwaitingHeader {
            self.head_begun = state.pipelined();
            if let Some(head) = self.head.as_mut() {
                *head = HeadEnd::default();
            }
        }
        phase
    }

    fn deadline(&self, state: &ConnState, phase: Phase) -> Option<Deadline> {
        let head_complete = self.head.is_some_and(|h| h.is_done());
        let (after, strict) = match phase {
            Phase::Proxying if self.head.is_none() => return None,
            Phase::Proxying => (look(state), false),
            Phase::AwaitingHeader if head_complete => (look(state), false),
            Phase::WebSocket => (state.websocket_idle(), true),
            Phase::AwaitingHeader if self.head_begun => (state.request_header(), true),
            Phase::AwaitingHeader => (state.http_idle(), true),
        };
        Some(Deadline {
            at: self.since + after,
            strict,
        })
    }

    /// The current phase; `Err` when its deadline has passed, otherwise the timer is armed
    /// for it.
    ///
    /// While an HTTP/1.x request is proxied the timer is armed too, with no deadline behind
    /// it: the connection is polled for reading last before the answer goes out and may not
    /// be again after it, so a timer must wake it to begin the idle deadline.
    ///
    /// Moving a timer costs a lock and the timer wheel, and the deadline moves later with
    /// every answer (and every WebSocket read): a timer already armed to fire by the deadline
    /// is kept, and when it fires before the deadline it is armed again for it. So the timer
    /// moves once per deadline's length at most, not once per request or message.
    pub fn check(&mut self, state: &ConnState, cx: &mut Context<'_>) -> io::Result<Phase> {
        let phase = self.sync(state);
        let Some(Deadline { at, strict }) = self.deadline(state, phase) else {
            return Ok(phase);
        };
        if self.timer.at().is_none_or(|armed| armed > at) {
            self.timer.arm(at);
        }
        if !self.timer.elapsed(cx) {
            return Ok(phase);
        }
        let now = Instant::now();
        if !strict || now < at {
            // Nothing is late: look again later.
            let next = if strict {
                at
            } else {
                self.since = now;
                now + look(state)
            };
            self.timer.arm(next);
            let _ = self.timer.elapsed(cx);
            return Ok(phase);
        }
        let what = match phase {
            Phase::WebSocket => "WebSocket idle timeout",
            _ if self.head_begun => "request header timeout",
            _ => "idle keep-alive timeout",
        };
        Err(io::Error::new(io::ErrorKind::TimedOut, what))
    }

    /// `bytes` were read from the client in `phase`: a WebSocket's idle clock restarts; an
    /// HTTP/1.x connection notes the stream offset and where the head ends.
    pub fn read(&mut self, state: &ConnState, phase: Phase, bytes: &[u8]) {
        if phase == Phase::WebSocket {
            self.since = Instant::now();
            return;
        }
        let Some(head) = self.head.as_mut() else {
            return;
        };
        let mut end = None;
        if phase == Phase::AwaitingHeader {
            let begins = !self.head_begun;
            self.head_begun = true;
            end = head.find(bytes);
            // A head complete in the read that began it needs no deadline of its own.
            if begins && end.is_none() {
                self.since = Instant::now();
            }
        }
        state.handed(bytes.len(), end);
    }
}
