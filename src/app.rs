//! The HTTP application: one listener for the webhook receiver, the query
//! API, health and metrics. `bind` takes the listen address (port 0 in
//! tests) and exposes the bound one; `run` takes the shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access_log::{AccessLogWriter, access_log};
use crate::api::{self, ApiAuth, ApiState, StatsCost};
use crate::config::{HttpSettings, KafkaArgs};
use crate::error::error_response;
use crate::health;
use crate::health::consumer::ConsumerHealth;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::receive::{self, Receiver, ReceiverProgram, signature::SignatureVerifier};
use crate::serve::ConnectionLimits;

/// What the listener serves: the webhook receiver, the API and the
/// operations endpoints, each room with its own state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The webhook receiver.
    pub receiver: Arc<Receiver>,
    /// The `/v1` API.
    pub api: Arc<ApiState>,
    /// `/livez`, `/readyz`, `/metrics`.
    pub ops: Arc<health::OpsState>,
}

/// The OpenAPI document's frame; the paths come from the routes themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "connectflow", description = "Finicity Connect webhooks, consent and authentication lifecycle"),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the query routes refer to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route and the OpenAPI document generated from them, so the
/// document cannot miss a route.
pub fn routes(state: &AppState) -> (Router, utoipa::openapi::OpenApi) {
    let webhooks = OpenApiRouter::new()
        .routes(routes!(receive::handle))
        .routes(routes!(receive::handle_program))
        .with_state(state.receiver.clone());
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(api::routes(state.api.clone()))
        .merge(webhooks)
        .merge(health::routes(state.ops.clone()))
        .split_for_parts();
    let router = router.merge(crate::console::routes());
    openapi.paths.add_path_operation(
        OPENAPI_PATH,
        vec![utoipa::openapi::HttpMethod::Get],
        utoipa::openapi::path::OperationBuilder::new()
            .summary(Some("This OpenAPI 3.1 document"))
            .tag("operations")
            .response("200", utoipa::openapi::ResponseBuilder::new().description("The OpenAPI document"))
            .build(),
    );
    let document = Arc::new(openapi.clone());
    let router = router
        .route(OPENAPI_PATH, get(move || async move { Json(document.as_ref().clone()) }))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        });
    (router, openapi)
}

/// Where the OpenAPI document is served (no authentication).
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// Builds the router.
pub fn router(state: &AppState) -> Router {
    routes(state).0
}

/// The query API's own pool: to the same database as `pool`, with its own
/// `CONNECTFLOW_API_MAX_CONNECTIONS` connections, so that API queries never
/// take the connections of readiness, the access log's writer or (in `all`)
/// the consumer; and every statement on it under `statement_timeout`
/// (`CONNECTFLOW_API_STATEMENT_TIMEOUT_MS`), set when each connection opens.
/// The access log's writer stays on `pool`: its batched inserts are not
/// the API's queries and must not be cancelled with them.
fn api_pool(pool: &PgPool, settings: &HttpSettings) -> PgPool {
    let timeout_ms = settings.api_statement_timeout.as_millis();
    let options = (*pool.connect_options()).clone().options([("statement_timeout", timeout_ms)]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(settings.api_max_connections)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// The lookups' pool: to the server `read_pool` reads from, under the same
/// statement timeout, with as many connections
/// (`CONNECTFLOW_API_MAX_CONNECTIONS`), each keeping the plans of its
/// statements ([`crate::store::cached_plan_options`]). Opened on demand.
fn lookup_pool(read_pool: &PgPool, settings: &HttpSettings) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(settings.api_max_connections)
        .acquire_timeout(read_pool.options().get_acquire_timeout())
        .connect_lazy_with(crate::store::cached_plan_options((*read_pool.connect_options()).clone()))
}

/// The read replica's pool (`CONNECTFLOW_DATABASE_READ_URL`), with the
/// limits of the API's own pool: its size and `statement_timeout`.
fn replica_pool(url: &crate::secret::Secret, settings: &HttpSettings) -> anyhow::Result<PgPool> {
    let timeout_ms = settings.api_statement_timeout.as_millis().to_string();
    let options = crate::store::connect_options(url.expose())
        .context("CONNECTFLOW_DATABASE_READ_URL is not a valid Postgres URL")?
        .options([("statement_timeout", timeout_ms.as_str())]);
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(settings.api_max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// How often the read replica's lag is measured for
/// `connectflow_database_replica_lag_seconds`.
const REPLICA_LAG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Measures the read replica's lag into its gauge until `stop`.
async fn watch_replica_lag(replica: PgPool, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut every = tokio::time::interval(REPLICA_LAG_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match crate::store::replica_lag_seconds(&replica).await {
            Ok(lag) => {
                metrics.replica_lag_seconds.set(lag);
            }
            Err(err) => tracing::warn!(error = %err, "measuring the read replica's lag failed"),
        }
    }
}

/// The HTTP server, bound and ready to run.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    receiver: Arc<Receiver>,
    api: Arc<ApiState>,
    pool: PgPool,
    /// The read replica's pool, when configured.
    replica: Option<PgPool>,
    metrics: Arc<Metrics>,
    consumer: Option<Arc<ConsumerHealth>>,
    access_log: AccessLogWriter,
    settings: HttpSettings,
}

impl HttpServer {
    /// Binds the listener and builds the state (the producer included).
    /// `consumer` is the health of a lifecycle consumer running in the same
    /// process (`connectflow all`), which `/livez` then reports.
    pub async fn bind(
        settings: HttpSettings,
        kafka: &KafkaArgs,
        pool: PgPool,
        metrics: Arc<Metrics>,
        consumer: Option<Arc<ConsumerHealth>>,
    ) -> anyhow::Result<Self> {
        let publisher = Publisher::new(kafka, settings.publish_timeout)?;
        let programs = settings
            .programs
            .iter()
            .filter_map(|program| {
                let secrets = program.partner_secrets.as_ref()?;
                Some(ReceiverProgram { id: program.id.clone(), verifier: SignatureVerifier::new(secrets) })
            })
            .collect();
        let receiver = Arc::new(Receiver {
            programs,
            publisher: publisher.clone(),
            metrics: metrics.clone(),
            max_body_bytes: settings.max_body_bytes,
            request_timeout: settings.request_timeout,
            slots: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent_webhooks)),
            body_budget: crate::receive::budget::BodyBudget::new(settings.max_inflight_body_bytes),
            webhook_data_keys: settings.webhook_data_keys.clone(),
            log_limiter: Arc::default(),
        });
        let (access_log, access_log_writer) =
            access_log(pool.clone(), settings.access_log_queue, settings.api_statement_timeout, metrics.clone());
        let api_pool = api_pool(&pool, &settings);
        let replica = settings.database_read_url.as_ref().map(|url| replica_pool(url, &settings)).transpose()?;
        if replica.is_some() {
            tracing::info!("the query API and statistics read from CONNECTFLOW_DATABASE_READ_URL");
        }
        let read_pool = replica.clone().unwrap_or_else(|| api_pool.clone());
        let api = Arc::new(ApiState {
            lookup_pool: lookup_pool(&read_pool, &settings),
            read_pool,
            pool: api_pool,
            auth: ApiAuth::new(&settings.api_tokens),
            programs: settings.programs.clone(),
            publisher,
            access_log,
            idempotency_key_ttl: settings.idempotency_key_ttl,
            stats_max_window: chrono::Duration::days(i64::from(settings.stats_max_window_days)),
            stats: StatsCost::new(settings.stats_concurrency, settings.api_statement_timeout, settings.stats_cache_ttl),
            metrics: metrics.clone(),
        });
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding CONNECTFLOW_LISTEN={}", settings.listen))?;
        Ok(Self { listener, receiver, api, pool, replica, metrics, consumer, access_log: access_log_writer, settings })
    }

    /// The address actually bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener.local_addr().context("reading the bound address")
    }

    /// The API's shared state, for tests that look at its pools.
    #[doc(hidden)]
    pub fn api_state(&self) -> Arc<ApiState> {
        self.api.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish (bounded by the grace period), stops the
    /// API token refresher (which writes the tokens' last uses) and flushes
    /// the producer so nothing acknowledged is left in memory.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { listener, receiver, api, pool, replica, metrics, consumer, access_log, settings } = self;
        let publisher = receiver.publisher.clone();
        let lag_stop = shutdown.child_token();
        let lag_watch =
            replica.clone().map(|replica| tokio::spawn(watch_replica_lag(replica, metrics.clone(), lag_stop.clone())));
        let ops = Arc::new(health::OpsState {
            pool,
            replica,
            publisher: publisher.clone(),
            metrics,
            // `all` consumes too; `serve` takes webhooks with Kafka alone.
            readiness_needs_postgres: consumer.is_some(),
            consumer,
            readiness: health::ReadinessCache::default(),
        });
        tracing::info!(listen = %listener.local_addr()?, "HTTP server listening");
        // Issued API tokens: read from Postgres now and every 2 s, so that
        // new, revoked and expired ones take effect without a restart.
        let refresher_stop = shutdown.child_token();
        let refresher = tokio::spawn({
            let (api, stop) = (api.clone(), refresher_stop.clone());
            async move { api.auth.keep_fresh(&api.pool, stop).await }
        });
        // The access log's writer outlives the listener: it writes the
        // records of the requests still finishing, within the grace period.
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(access_log.run(writer_stop.clone(), settings.shutdown_grace));
        let metrics = ops.metrics.clone();
        let app = router(&AppState { receiver, api, ops });
        let limits =
            ConnectionLimits { header_timeout: settings.request_timeout, max_connections: settings.max_connections };
        let serve = crate::serve::serve(listener, app, limits, &metrics, shutdown.clone());
        let grace = settings.shutdown_grace;
        tokio::select! {
            () = serve => {},
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!(?grace, "in-flight requests did not finish within the grace period"),
        }
        refresher_stop.cancel();
        refresher.await.context("the API token refresher")?;
        lag_stop.cancel();
        if let Some(lag_watch) = lag_watch {
            lag_watch.await.context("the replica lag gauge")?;
        }
        writer_stop.cancel();
        writer.await.context("the access log's writer")?;
        tokio::task::spawn_blocking(move || publisher.flush(grace)).await.context("flushing the producer")?;
        tracing::info!("HTTP server stopped");
        Ok(())
    }
}
