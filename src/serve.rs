//! Serving a router on a public listener with the limits a public endpoint
//! needs, which `axum::serve` does not expose: a deadline for the request
//! headers (a client that sends half its headers, or an idle keep-alive
//! connection, is cut off) and graceful shutdown that waits for requests in
//! flight. The body deadline and the concurrency cap live in the webhook
//! handler, where the answer (408, 503) can use the one error shape.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Accept errors (too many open files) pause accepting this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown`, then stops accepting and
/// waits for the connections' requests in flight to finish (the caller
/// bounds that wait).
///
/// `header_timeout` bounds how long a connection may take to send a
/// request's headers, counted from when the server is ready to read them:
/// for a new connection from the accept, for a kept-alive one from the end
/// of the previous answer. So it is also the keep-alive idle timeout.
pub async fn serve(listener: TcpListener, router: Router, header_timeout: Duration, shutdown: CancellationToken) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(header_timeout));
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
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY");
        }
        let service =
            TowerToHyperService::new(router.clone().map_request(|req: hyper::Request<Incoming>| req.map(Body::new)));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
