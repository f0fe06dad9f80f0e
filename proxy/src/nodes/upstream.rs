//! Connections to nodes, over hyper's client: HTTP/1.1 connections kept idle per worker thread
//! for the next request, one h2c connection per gRPC address and thread, and a fresh
//! connection for each WebSocket upgrade.
//!
//! ```text
//!   request path ── send(address, request) ──► a kept connection (open, ready) or a new one
//!        ▲                                        │ hyper's connection task: frames the request,
//!        │                                        │ parses the answer, and ends the moment the
//!        │                                        │ node closes the connection
//!        └── Lease::give_back, once the answer's body has ended whole ◄──┘
//! ```
//!
//! One set of kept connections per worker thread: a connection's task runs on the thread that
//! made it (`work_stealing = false`), so nothing here is locked or shared. A connection is kept
//! only after its answer ended cleanly; hyper refuses one whose node sent bytes nobody asked
//! for, and one dropped mid-answer is closed. A connection idle for [`UPSTREAM_IDLE`] is let
//! go, as are those over [`MAX_IDLE_PER_NODE`].
//!
//! What a failure means for a retry ([`Failure`]): a request that never left (no connection, or
//! a kept connection found closed before a byte was written) may go to any node; one that may
//! have reached its node may go again only if its method is idempotent.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::nodes::pool::UPSTREAM_IDLE;

/// A request body, as the edge sends it: read in full first, so its length is known.
pub type OutBody = Full<Bytes>;

/// Idle connections kept per node and worker thread.
pub const MAX_IDLE_PER_NODE: usize = 256;

/// How sending a request to a node failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection: nothing reached the node. The request comes back.
    Refused(io::Error, Box<Request<OutBody>>),
    /// The request never left (a kept connection was found closed): it may go anywhere.
    Unsent(Box<Request<OutBody>>),
    /// The request may have reached the node.
    Failed(hyper::Error),
    /// No answer head within `timeouts.upstream_read`: the node may still be working on it.
    Silent,
}

struct Idle {
    sender: http1::SendRequest<OutBody>,
    watch: Watch,
    since: Duration,
}

/// A node connection's answer deadline: one timer per connection, registered once and moved
/// only when it fires before the deadline of the request now waiting (each request's deadline
/// is later than the last one's). Arming a timer of tokio's for every request, and removing
/// it again, costs more than the rest of the exchange's own work.
struct Watch {
    timer: Pin<Box<Sleep>>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// `send`'s answer, or `None` once `deadline` has passed without one.
    async fn within<F: Future>(&mut self, deadline: Instant, send: F) -> Option<F::Output> {
        let mut send = pin!(send);
        let timer = &mut self.timer;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = send.as_mut().poll(cx) {
                return Poll::Ready(Some(answer));
            }
            loop {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if Instant::now() >= deadline {
                    return Poll::Ready(None);
                }
                timer.as_mut().reset(deadline);
            }
        })
        .await
    }
}

/// The monotonic clock to a few milliseconds, without a clock read's cost: enough to time
/// idle connections out after [`UPSTREAM_IDLE`].
fn coarse_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Kept connections per node address: a few nodes, looked up by a linear scan.
#[derive(Default)]
struct Kept {
    h1: Vec<(SocketAddr, Vec<Idle>)>,
    h2: Vec<(SocketAddr, http2::SendRequest<OutBody>)>,
    /// When idle connections of every node were last swept ([`coarse_now`]).
    swept: Option<Duration>,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// A kept HTTP/1.1 connection on loan to one request, given back once its answer has ended.
pub struct Lease {
    address: SocketAddr,
    sender: http1::SendRequest<OutBody>,
    watch: Watch,
}

impl Lease {
    /// The answer's body ended whole: the connection may carry the next request.
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            let now = coarse_now();
            // Now and then, let go of what has been idle too long, for every node (one that
            // left the config included).
            if kept
                .swept
                .is_none_or(|at| now.saturating_sub(at) > UPSTREAM_IDLE / 5)
            {
                kept.swept = Some(now);
                kept.h1.retain_mut(|(_, idle)| {
                    idle.retain(|c| {
                        now.saturating_sub(c.since) < UPSTREAM_IDLE && !c.sender.is_closed()
                    });
                    !idle.is_empty()
                });
            }
            let idle = match kept.h1.iter().position(|(a, _)| *a == self.address) {
                Some(i) => &mut kept.h1[i].1,
                None => {
                    kept.h1.push((self.address, Vec::new()));
                    let last = kept.h1.len() - 1;
                    &mut kept.h1[last].1
                }
            };
            if idle.len() >= MAX_IDLE_PER_NODE {
                // The oldest goes.
                idle.remove(0);
            }
            idle.push(Idle {
                sender: self.sender,
                watch: self.watch,
                since: now,
            });
        })
    }
}

/// The most recently used idle connection to `address` that is still open.
fn take_idle(address: SocketAddr) -> Option<(http1::SendRequest<OutBody>, Watch)> {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let idle = &mut kept.h1.iter_mut().find(|(a, _)| *a == address)?.1;
        let now = coarse_now();
        while let Some(Idle {
            sender,
            watch,
            since,
        }) = idle.pop()
        {
            if now.saturating_sub(since) < UPSTREAM_IDLE && !sender.is_closed() {
                return Some((sender, watch));
            }
        }
        None
    })
}

async fn connect(address: SocketAddr, timeout: Duration) -> io::Result<TokioIo<TcpStream>> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

/// A new HTTP/1.1 connection to `address` for a WebSocket upgrade, its task running: once
/// the node answers 101, hyper hands the connection over.
pub async fn connect_upgradable(
    address: SocketAddr,
    timeout: Duration,
) -> io::Result<http1::SendRequest<OutBody>> {
    connect_h1(address, timeout, true).await
}

/// A new HTTP/1.1 connection to `address`, its task running; `upgrades`: it can carry a
/// WebSocket upgrade.
async fn connect_h1(
    address: SocketAddr,
    timeout: Duration,
    upgrades: bool,
) -> io::Result<http1::SendRequest<OutBody>> {
    let io = connect(address, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        // One buffer, one `send`, as towards players (`http::Server`).
        .writev(false)
        .handshake(io)
        .await
        .map_err(io::Error::other)?;
    if upgrades {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "node connection ended");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "node connection ended");
            }
        });
    }
    Ok(sender)
}

/// Send `request` to the node at `address` over HTTP/1.1, on a kept connection when one is
/// open, else a new one; its answer's head within `read_timeout`. The lease goes back with
/// the answer's body once it has ended whole.
pub async fn send_h1(
    address: SocketAddr,
    mut request: Box<Request<OutBody>>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<(Response<Incoming>, Lease), Failure> {
    // Kept connections first; one found closed gives the request back, unsent.
    while let Some((mut sender, mut watch)) = take_idle(address) {
        if sender.ready().await.is_err() {
            continue;
        }
        match exchange(&mut sender, &mut watch, request, read_timeout).await {
            Ok(response) => {
                return Ok((
                    response,
                    Lease {
                        address,
                        sender,
                        watch,
                    },
                ))
            }
            Err(Failure::Unsent(back)) => request = back,
            Err(other) => return Err(other),
        }
    }
    // Boxed: a handshake's state is large, and a kept connection, the usual case, needs none.
    let mut sender = match Box::pin(connect_h1(address, connect_timeout, false)).await {
        Ok(sender) => sender,
        Err(e) => return Err(Failure::Refused(e, request)),
    };
    let mut watch = Watch::new();
    let response = exchange(&mut sender, &mut watch, request, read_timeout).await?;
    Ok((
        response,
        Lease {
            address,
            sender,
            watch,
        },
    ))
}

async fn exchange(
    sender: &mut http1::SendRequest<OutBody>,
    watch: &mut Watch,
    request: Box<Request<OutBody>>,
    read_timeout: Duration,
) -> Result<Response<Incoming>, Failure> {
    let deadline = Instant::now() + read_timeout;
    match watch
        .within(deadline, sender.try_send_request(*request))
        .await
    {
        Some(Ok(response)) => Ok(response),
        Some(Err(mut e)) => match e.take_message() {
            Some(request) => Err(Failure::Unsent(Box::new(request))),
            None => Err(Failure::Failed(e.into_error())),
        },
        // Dropping the request's future closes its connection.
        None => Err(Failure::Silent),
    }
}

/// Send a gRPC `request` to the node's h2c address, on this thread's connection to it (made
/// when there is none, or it has closed).
pub async fn send_h2(
    address: SocketAddr,
    mut request: Box<Request<OutBody>>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Response<Incoming>, Failure> {
    for fresh in [false, true] {
        let kept = KEPT.with(|kept| {
            let kept = kept.borrow();
            kept.h2
                .iter()
                .find(|(a, s)| *a == address && !s.is_closed())
                .map(|(_, s)| s.clone())
        });
        let mut sender = match kept {
            Some(sender) if !fresh => sender,
            _ => {
                let io = match connect(address, connect_timeout).await {
                    Ok(io) => io,
                    Err(e) => return Err(Failure::Refused(e, request)),
                };
                let handshake = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await;
                let (sender, conn) = match handshake {
                    Ok(made) => made,
                    Err(e) => return Err(Failure::Refused(io::Error::other(e), request)),
                };
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "node h2c connection ended");
                    }
                });
                KEPT.with(|kept| {
                    let mut kept = kept.borrow_mut();
                    kept.h2.retain(|(a, _)| *a != address);
                    kept.h2.push((address, sender.clone()));
                });
                sender
            }
        };
        if sender.ready().await.is_err() {
            continue;
        }
        let sent = tokio::time::timeout(read_timeout, sender.try_send_request(*request)).await;
        match sent {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => request = Box::new(back),
                None => return Err(Failure::Failed(e.into_error())),
            },
            Err(_) => return Err(Failure::Silent),
        }
    }
    Err(Failure::Unsent(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kept_connections_timer_waits_for_each_requests_own_deadline() {
        let mut watch = Watch::new();
        // A first answer in time: the timer stays armed at that request's deadline.
        let first = Instant::now() + Duration::from_millis(50);
        let answered = watch
            .within(first, tokio::time::sleep(Duration::from_millis(5)))
            .await;
        assert!(answered.is_some());
        // The next request's deadline is later: the early timer is not its end.
        let second = Instant::now() + Duration::from_millis(300);
        let silent = watch.within(second, std::future::pending::<()>()).await;
        assert!(silent.is_none());
        assert!(Instant::now() >= second, "cut off before its deadline");
        // And an answer that comes before the deadline is the answer.
        let third = Instant::now() + Duration::from_secs(30);
        assert_eq!(watch.within(third, async { 7 }).await, Some(7));
    }
}
