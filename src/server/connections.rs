//! Accepting and keeping HTTP connections, with the guards a server facing the open network
//! needs: a cap on open connections (excess ones are refused at once with a 503), a deadline for
//! a request's head once its first byte arrived (slowloris), an idle timeout between requests on
//! a kept-alive connection, and graceful shutdown. hyper serves each connection; a small watchdog
//! per connection reads how the connection is used (bytes read, requests in flight) and closes it
//! when a deadline passes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::api::problem::{Problem, PROBLEM_CONTENT_TYPE};
use crate::telemetry::Metrics;

/// How connections are limited; every field is a setting (README, "Limits and timeouts").
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// From a request's first byte to the end of its head.
    pub header_read_timeout: Duration,
    /// Between requests on a kept-alive connection (and from accepting to the first byte).
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits for the
/// open connections to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max));
    let (stop, stopping) = watch::channel(false);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors or a connection reset before it was accepted: the
                // listener itself is fine; back off briefly instead of spinning.
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, app.clone(), limits.clone(), metrics.clone(), stopping.clone(), permit));
            }
            Err(_) => {
                metrics.connections_refused.inc();
                refuse(stream);
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it closes.
    let _all_closed = permits.acquire_many(max as u32).await;
    Ok(())
}

/// A 503 for a connection over the cap, written without waiting: a client that cannot take it
/// at once gets the connection closed. It is written by hand because no HTTP connection is served.
fn refuse(stream: TcpStream) {
    let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "too many open connections (VAE_MAX_CONNECTIONS); retry shortly");
    let body = serde_json::to_string(&problem).expect("problem serialises");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {PROBLEM_CONTENT_TYPE}\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request's head did not arrive in full in time.
    Header,
    /// No request came in time.
    Idle,
}

impl Expiry {
    fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
        }
    }
}

/// How a connection is being used, shared by its stream, its service and its watchdog. Times
/// are milliseconds since the connection was accepted.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened).
    idle_since_ms: AtomicU64,
    /// One more than when the first byte of a request still being read arrived; 0 when none.
    head_started_ms: AtomicU64,
    /// Wakes the watchdog when a head starts: its deadline may come before the one it sleeps to.
    head_started: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            head_started: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Bytes arrived: between requests, they start the next request's head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
            && self.head_started_ms.compare_exchange(0, self.now_ms() + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.head_started.notify_one();
        }
    }

    /// A request's head was read in full and its handler starts.
    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Release);
    }

    fn request_finished(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// The next moment to look again, and whether a deadline has passed by now.
    fn check(&self, limits: &ConnectionLimits) -> (Instant, Option<Expiry>) {
        let now = self.now_ms();
        let at = |ms: u64| self.opened + Duration::from_millis(ms);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Handlers have their own time limit (VAE_REQUEST_TIMEOUT_SECS); look again later.
            return (at(now) + limits.header_read_timeout.min(limits.idle_timeout), None);
        }
        let (deadline, expiry) = match self.head_started_ms.load(Ordering::Acquire) {
            0 => (self.idle_since_ms.load(Ordering::Acquire) + limits.idle_timeout.as_millis() as u64, Expiry::Idle),
            started => (started - 1 + limits.header_read_timeout.as_millis() as u64, Expiry::Header),
        };
        if now >= deadline {
            (at(now), Some(expiry))
        } else {
            (at(deadline), None)
        }
    }
}

/// Ends a request's activity when its handler's future completes or is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    metrics.connections_open.inc();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedStream { inner: stream, activity: activity.clone() });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |request: hyper::Request<hyper::body::Incoming>| {
            activity.request_started();
            let in_flight = InFlight(activity.clone());
            let answer = app.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                let response = answer.await;
                drop(in_flight);
                response
            }
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut shutting_down = *stopping.borrow();
    if shutting_down {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        let (next_look, expired) = activity.check(&limits);
        match expired {
            // Nothing is in flight and the head is overdue: close without an answer.
            Some(Expiry::Header) => {
                metrics.connections_timed_out.with_label_values(&[Expiry::Header.label()]).inc();
                break;
            }
            // Idle: a graceful close, which lets a response still being written finish.
            Some(Expiry::Idle) if !shutting_down => {
                metrics.connections_timed_out.with_label_values(&[Expiry::Idle.label()]).inc();
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            _ => {}
        }
        // A connection closing gracefully is looked at again only now and then.
        let next_look = if expired.is_some() { Instant::now() + Duration::from_secs(1) } else { next_look };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = tokio::time::sleep_until(next_look.into()) => {}
            () = activity.head_started.notified() => {}
            changed = stopping.changed(), if !shutting_down => {
                if changed.is_ok() {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
    metrics.connections_open.dec();
}

/// The TCP stream, telling the connection's activity when bytes arrive.
struct WatchedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits { max_connections: 1, header_read_timeout: Duration::from_secs(2), idle_timeout: Duration::from_secs(5) }
    }

    #[test]
    fn an_unused_connection_expires_after_the_idle_timeout() {
        let activity = Activity::new();
        let (next, expired) = activity.check(&limits());
        assert_eq!(expired, None);
        assert!(next >= activity.opened + Duration::from_secs(5) && next < activity.opened + Duration::from_millis(5100));
        let aged = Activity { opened: Instant::now() - Duration::from_secs(6), ..Activity::new() };
        assert_eq!(aged.check(&limits()).1, Some(Expiry::Idle));
    }

    #[test]
    fn a_started_head_has_the_shorter_header_deadline() {
        let activity = Activity { opened: Instant::now() - Duration::from_secs(3), ..Activity::new() };
        // The first byte came just now (3 s after opening): the head has until 5 s.
        activity.bytes_read();
        let (next, expired) = activity.check(&limits());
        assert_eq!(expired, None);
        assert!(next <= activity.opened + Duration::from_millis(5100), "{:?}", next - activity.opened);
        // More bytes of the same head do not move its deadline.
        activity.bytes_read();
        assert_eq!(activity.check(&limits()).0, next);
        let slow = Activity { opened: Instant::now() - Duration::from_secs(3), ..Activity::new() };
        slow.head_started_ms.store(1, Ordering::Release);
        assert_eq!(slow.check(&limits()).1, Some(Expiry::Header));
    }

    #[test]
    fn a_request_in_flight_never_expires_and_its_end_restarts_the_idle_clock() {
        let activity = Activity { opened: Instant::now() - Duration::from_secs(60), ..Activity::new() };
        activity.bytes_read();
        activity.request_started();
        // Body bytes of the request in flight start no head.
        activity.bytes_read();
        assert_eq!(activity.check(&limits()).1, None);
        activity.request_finished();
        let (next, expired) = activity.check(&limits());
        assert_eq!(expired, None);
        assert!(next > Instant::now() + Duration::from_secs(4));
    }
}
