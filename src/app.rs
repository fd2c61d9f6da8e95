//! The HTTP application: one listener for the webhook receiver, the query
//! API, health and metrics. `bind` takes the listen address (port 0 in
//! tests) and exposes the bound one; `run` takes the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{HttpSettings, KafkaArgs};
use crate::error::error_response;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::receive::{self, Receiver, signature::SignatureVerifier};
use crate::{health, query};

/// Shared state of every handler.
#[derive(Debug)]
pub struct AppState {
    /// Postgres pool.
    pub pool: PgPool,
    /// The webhook receiver.
    pub receiver: Arc<Receiver>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The query API's bearer tokens.
    pub api: query::ApiAuth,
}

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    let webhooks =
        Router::new().route("/webhooks/finicity/connect", post(receive::handle)).with_state(state.receiver.clone());
    Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(query::routes(state.clone()))
        .with_state(state)
        .merge(webhooks)
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
}

/// The HTTP server, bound and ready to run.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    state: Arc<AppState>,
    settings: HttpSettings,
}

impl HttpServer {
    /// Binds the listener and builds the state (the producer included).
    pub async fn bind(
        settings: HttpSettings,
        kafka: &KafkaArgs,
        pool: PgPool,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let publisher = Publisher::new(kafka, settings.publish_timeout)?;
        let receiver = Arc::new(Receiver {
            verifier: Arc::new(SignatureVerifier::new(&settings.partner_secrets)),
            publisher,
            metrics: metrics.clone(),
            max_body_bytes: settings.max_body_bytes,
        });
        let state = Arc::new(AppState { pool, receiver, metrics, api: query::ApiAuth::new(&settings.api_tokens) });
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding CONNECTFLOW_LISTEN={}", settings.listen))?;
        Ok(Self { listener, state, settings })
    }

    /// The address actually bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener.local_addr().context("reading the bound address")
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish (bounded by the grace period) and flushes
    /// the producer so nothing acknowledged is left in memory.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, state, settings } = self;
        let publisher = state.receiver.publisher.clone();
        tracing::info!(listen = %listener.local_addr()?, "HTTP server listening");
        let app = router(state);
        let stopping = shutdown.clone();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { stopping.cancelled().await });
        let grace = settings.shutdown_grace;
        tokio::select! {
            result = serve => result.context("HTTP server failed")?,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!(?grace, "in-flight requests did not finish within the grace period"),
        }
        tokio::task::spawn_blocking(move || publisher.flush(grace)).await.context("flushing the producer")?;
        tracing::info!("HTTP server stopped");
        Ok(())
    }
}
