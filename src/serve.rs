//! Serving a router on a public listener with the limits a public endpoint
//! needs, which `axum::serve` does not expose: a cap on open connections, a
//! deadline for a new connection's first byte and for the request headers
//! (a client that connects and stays silent, sends half its headers, or
//! idles on a keep-alive connection is cut off), an idle limit for HTTP/2
//! connections (which keep-alive pings alone would hold open for ever) and
//! graceful shutdown that waits for requests in flight. The body deadline,
//! the concurrency cap and the body budget of webhooks live in the webhook
//! handler, where the answer (408, 503) can use the one error shape.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
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
    /// previous answer. So it is also the keep-alive idle timeout, the
    /// HTTP/2 ping interval and ping-answer timeout, and the idle limit: a
    /// connection with no request open for this long is closed gracefully
    /// (HTTP/2: GOAWAY), even one that answers every ping.
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
/// deadline starts only after it. Once served, a connection is shut down
/// gracefully when it has had no request open for `limits.header_timeout`
/// ([`idle_for`]), or at `shutdown`.
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
    let connections = TaskTracker::new();
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
        let (builder, router, shutdown) = (builder.clone(), router.clone(), shutdown.clone());
        // Tracked from the accept, so the wait at shutdown covers a
        // connection whose task has not started yet.
        connections.spawn(async move {
            let _place = place;
            let first = tokio::select! {
                () = shutdown.cancelled() => None,
                first = first_bytes(&stream, limits.header_timeout) => first,
            };
            match first {
                None => {}
                Some(Protocol::Http1) => serve_http1(&builder, stream, router, &shutdown).await,
                Some(Protocol::MaybeHttp2) => {
                    serve_connection(&builder, stream, router, limits.header_timeout, &shutdown).await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// A request line: hyper's header timeout and keep-alive bound it.
    Http1,
    /// HTTP/2's preface (`PRI * HTTP/2.0`), or too few bytes to tell.
    MaybeHttp2,
}

/// The start of HTTP/2's connection preface; no HTTP/1 method is `PRI`.
const H2_PREFACE_START: &[u8] = b"PRI";

/// Serves an HTTP/1 connection until it ends, shutting it down gracefully
/// (after the answer being written) at `shutdown`. An idle connection is
/// cut by hyper's header timeout, so no request counting is needed here.
async fn serve_http1(
    builder: &Builder<TokioExecutor>,
    stream: TcpStream,
    router: Router,
    shutdown: &CancellationToken,
) {
    let service = TowerToHyperService::new(router.map_request(|req: hyper::Request<Incoming>| req.map(Body::new)));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(err) = ended {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            return;
        }
        () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// Serves one connection until it ends, shutting it down gracefully (HTTP/1:
/// after the answer being written; HTTP/2: GOAWAY, the open streams
/// finished) once it has been idle for `idle_limit` or at `shutdown`.
async fn serve_connection(
    builder: &Builder<TokioExecutor>,
    stream: TcpStream,
    router: Router,
    idle_limit: Duration,
    shutdown: &CancellationToken,
) {
    let (open, mut watch_open) = watch::channel(0_usize);
    let open = Arc::new(open);
    // Each request counted open from its head to the end of its answer.
    let service = TowerToHyperService::new(tower::service_fn(move |req: hyper::Request<Incoming>| {
        let request = OpenRequest::new(open.clone());
        let router = router.clone();
        async move {
            let response = router.oneshot(req.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| Body::new(CountedBody { body, _request: request })))
        }
    }));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    let idle = idle_for(&mut watch_open, idle_limit);
    let mut idle = std::pin::pin!(idle);
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut idle, if !closing => {
                tracing::debug!(?idle_limit, "connection closed: no request within the idle limit");
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// What `stream`'s first bytes, sent within `timeout`, say it speaks
/// (peeked, so hyper still reads them). `None` when the client closed or
/// failed first, or stayed silent.
async fn first_bytes(stream: &TcpStream, timeout: Duration) -> Option<Protocol> {
    let mut start = [0_u8; H2_PREFACE_START.len()];
    match tokio::time::timeout(timeout, stream.peek(&mut start)).await {
        Ok(Ok(0)) => None,
        Ok(Ok(n)) if start[..n] == H2_PREFACE_START[..n] => Some(Protocol::MaybeHttp2),
        Ok(Ok(_)) => Some(Protocol::Http1),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "connection failed before its first byte");
            None
        }
        Err(_) => {
            tracing::debug!(?timeout, "connection closed: nothing sent within the header timeout");
            None
        }
    }
}

/// Returns once no request has been open on the connection for `limit`
/// (`open` counts them): for HTTP/1 the header timeout already cuts such a
/// connection at the same point; an HTTP/2 connection, whose keep-alive
/// pings a client may answer for ever without sending a request, has no
/// other bound.
async fn idle_for(open: &mut watch::Receiver<usize>, limit: Duration) {
    loop {
        if open.wait_for(|&open| open == 0).await.is_err() {
            // The service (and so every request) is gone: the connection is
            // ending on its own.
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(limit) => return,
            changed = open.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// One request counted open on its connection until dropped: the request
/// is being handled, or its answer written.
struct OpenRequest(Arc<watch::Sender<usize>>);

impl OpenRequest {
    fn new(open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|open| *open += 1);
        Self(open)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// An answer's body that keeps its request counted open until it is
/// written (or dropped), the same body otherwise (its size hint, and so
/// its Content-Length, kept).
struct CountedBody {
    body: Body,
    _request: OpenRequest,
}

impl hyper::body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn protocol_of(first: &[u8]) -> Option<Protocol> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(first).await.expect("write");
        client.flush().await.expect("flush");
        first_bytes(&server, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn a_connection_is_told_http1_or_http2_by_its_first_bytes() {
        assert_eq!(protocol_of(b"POST /webhooks HTTP/1.1\r\n").await, Some(Protocol::Http1));
        assert_eq!(protocol_of(b"PUT / HTTP/1.1\r\n").await, Some(Protocol::Http1));
        assert_eq!(protocol_of(b"GET / HTTP/1.1\r\n").await, Some(Protocol::Http1));
        assert_eq!(protocol_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await, Some(Protocol::MaybeHttp2));
        assert_eq!(protocol_of(b"PR").await, Some(Protocol::MaybeHttp2), "too few bytes to tell: counted");
    }
}
