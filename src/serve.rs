//! Serving a router on a public listener with the limits a public endpoint
//! needs, which `axum::serve` does not expose: a cap on open connections, a
//! deadline for a new connection's first byte and for the request headers
//! (a client that connects and stays silent, sends half its headers, or
//! idles on a keep-alive connection is cut off) and graceful shutdown that
//! waits for requests in flight. The body deadline and the concurrency cap
//! of webhooks live in the webhook handler, where the answer (408, 503) can
//! use the one error shape.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Accept errors (too many open files) pause accepting this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The most an HTTP/1 connection buffers of what it reads (hyper's default,
/// about 400 KiB, grows under a fast sender: 64 bodies in flight would hold
/// some 25 MiB in read buffers besides the bodies themselves). Also the
/// largest request head accepted.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a connection may take to send its first byte, and then a
    /// request's headers, counted from when the server is ready to read
    /// them: for a new connection from the accept (once for the first byte,
    /// again for the headers), for a kept-alive one from the end of the
    /// previous answer. So it is also the keep-alive idle timeout, and the
    /// HTTP/2 ping interval and ping-answer timeout.
    pub header_timeout: Duration,
    /// Most connections open at once; one past it is closed unread.
    pub max_connections: usize,
}

/// The connection figures [`serve`] keeps.
#[derive(Debug, Clone)]
struct ConnectionCounts {
    open: Gauge,
    refused: Counter,
}

/// One open connection's place under the cap; gives it back (and lowers
/// the open-connection gauge) when the connection's task ends, however it
/// ends.
struct Place {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Serves `router` on `listener` until `shutdown`, then stops accepting and
/// waits for the connections' requests in flight to finish (the caller
/// bounds that wait).
///
/// Each accepted connection takes a place under `limits.max_connections`
/// or is closed at once (counted in `connections_refused`). Its task then
/// waits up to `limits.header_timeout` for a first byte before handing the
/// socket to hyper: hyper-util's protocol detection (HTTP/1 or HTTP/2)
/// reads that byte with no deadline of its own, and HTTP/1's header
/// deadline starts only after it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(READ_BUFFER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let counts =
        ConnectionCounts { open: metrics.connections_open.clone(), refused: metrics.connections_refused.clone() };
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = places.clone().try_acquire_owned() else {
            counts.refused.inc();
            tracing::debug!(max = limits.max_connections, "connection refused: too many open");
            drop(stream);
            continue;
        };
        counts.open.inc();
        let place = Place { _permit: permit, open: counts.open.clone() };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY");
        }
        let service =
            TowerToHyperService::new(router.clone().map_request(|req: hyper::Request<Incoming>| req.map(Body::new)));
        // Taken before the task starts, so a shutdown signalled meanwhile
        // still reaches the connection.
        let watcher = graceful.watcher();
        let (builder, shutdown) = (builder.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _place = place;
            let spoke = tokio::select! {
                () = shutdown.cancelled() => false,
                spoke = first_byte(&stream, limits.header_timeout) => spoke,
            };
            if !spoke {
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Whether `stream` has a byte to read within `timeout` (peeked, so hyper
/// still reads it). False when the client closed or failed first, or stayed
/// silent.
async fn first_byte(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0_u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut byte)).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "connection failed before its first byte");
            false
        }
        Err(_) => {
            tracing::debug!(?timeout, "connection closed: nothing sent within the header timeout");
            false
        }
    }
}
