//! The HTTP API under `/v1`: "where is this customer in the connect
//! lifecycle?", the history behind the answer, filtered listings, the
//! funnel's aggregates and revocations of consent.
//!
//! One file per resource ([`customers`], [`events`], [`changes`],
//! [`export`], [`stats`], [`revocations`]); what they share lives beside them: the
//! bearer check, the principal a token stands for and its scopes
//! ([`auth`]; each handler checks its route's scope first), what is read from the query string
//! ([`params`]), the error answers described once for the OpenAPI document
//! ([`responses`]) and the documents themselves ([`model`], pure types a
//! client can use). Listings use keyset pagination with opaque cursors, so
//! pages stay stable while rows are being updated.

mod access;
mod audit;
mod auth;
mod changes;
mod customers;
mod erasures;
mod events;
mod export;
pub mod institutions;
mod me;
pub mod model;
pub mod params;
mod responses;
mod revocations;
mod stats;
mod stats_cost;

use std::sync::Arc;

use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{ApiAuth, Principal, ProgramAccess, Scope, Scopes, UnknownScope};
pub use stats_cost::StatsCost;

use crate::access_log::AccessLog;
use crate::metrics::{ApiRequestLabels, Metrics};
use crate::program::Programs;
use crate::publish::Publisher;

/// What the API's handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// The API's own Postgres pool on the primary, every statement under
    /// `CONNECTFLOW_API_STATEMENT_TIMEOUT_MS`: the routes that write
    /// (revocations, erasures) and what they read to decide.
    pub pool: PgPool,
    /// Where the read-only routes read (lookups, listings, events, changes,
    /// exports, statistics, the access log): the read replica's pool when
    /// `CONNECTFLOW_DATABASE_READ_URL` is set (under the same limits), else
    /// [`Self::pool`].
    pub read_pool: PgPool,
    /// Where a customer's lifecycle is looked up (`GET
    /// /v1/customers/{id}/lifecycle`): a pool of its own to the same server
    /// as [`Self::read_pool`], as large, whose connections keep the lookup's
    /// plan (`store::cached_plan_options`) where the others plan every
    /// statement; the statistics never hold its connections.
    pub lookup_pool: PgPool,
    /// The accepted bearer tokens.
    pub auth: ApiAuth,
    /// The programs: how long each one's authorizations last, for the
    /// expiry fields.
    pub programs: Arc<Programs>,
    /// The events topic's producer, for revocations.
    pub publisher: Publisher,
    /// Where each request's access-log record goes.
    pub access_log: AccessLog,
    /// How long a revocation's `Idempotency-Key` is remembered.
    pub idempotency_key_ttl: std::time::Duration,
    /// The longest statistics window answered; a longer one is cut.
    pub stats_max_window: chrono::Duration,
    /// The statistics routes' share of the pool and their cached answers.
    pub stats: StatsCost,
    /// Where each request's duration is counted.
    pub metrics: Arc<Metrics>,
}

/// Every `/v1` route, each behind the bearer check, documented.
pub fn routes(state: Arc<ApiState>) -> OpenApiRouter {
    // Layers wrap what is already there: the bearer check runs first, then
    // the access log, then the handler in a span naming its route; every
    // answer, a refusal of the bearer check included, is marked not to be
    // stored by any cache, and timed.
    documented_routes()
        .route_layer(axum::middleware::from_fn(in_route_span))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::log_access))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .route_layer(axum::middleware::map_response(no_store))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .with_state(state)
}

/// Counts the request's duration in `connectflow_api_request_seconds`, by
/// its route's template and the answer's status class.
async fn timed(
    axum::extract::State(state): axum::extract::State<Arc<ApiState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request.extensions().get::<axum::extract::MatchedPath>().map_or("", |path| path.as_str()).to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state
        .metrics
        .api_request_seconds
        .get_or_create(&ApiRequestLabels { route, class })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Runs the handler in a span naming its route (the template, never the
/// customer in the path), so that what it logs (a statement cancelled for
/// its timeout, for instance) says which route it was.
async fn in_route_span(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use tracing::Instrument;
    let route = request.extensions().get::<axum::extract::MatchedPath>().map_or("", |path| path.as_str()).to_owned();
    next.run(request).instrument(tracing::info_span!("api", route)).await
}

/// `Cache-Control: no-store`: answers about customers are personal data
/// that no browser, proxy or CDN may keep.
async fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

/// The routes and their OpenAPI description, before the bearer check.
fn documented_routes() -> OpenApiRouter<Arc<ApiState>> {
    let mut routes = OpenApiRouter::new()
        .routes(routes!(customers::get_lifecycle))
        .routes(routes!(events::get_events))
        .routes(routes!(changes::get_changes))
        .routes(routes!(export::get_export))
        .routes(routes!(customers::list_customers))
        .routes(routes!(revocations::revoke))
        .routes(routes!(erasures::erase))
        .routes(routes!(stats::get_funnel))
        .routes(routes!(stats::get_timeseries))
        .routes(routes!(stats::get_institutions))
        .routes(routes!(institutions::list_institutions))
        .routes(routes!(institutions::get_institution))
        .routes(routes!(audit::get_audit))
        .routes(routes!(me::get_me));
    responses::describe_shared(routes.get_openapi_mut());
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route states the one scope it needs, as a security requirement
    /// of the OpenAPI document, and documents the 403 of a token without it.
    #[test]
    fn every_route_documents_its_scope_and_the_403() {
        let openapi = serde_json::to_value(documented_routes().into_openapi()).expect("serialises");
        let names: Vec<&str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
        let mut operations = 0;
        for (path, item) in openapi["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                operations += 1;
                let security = operation["security"].as_array().expect("security");
                assert_eq!(security.len(), 1, "{method} {path}: {security:?}");
                let scopes = security[0]["bearer"].as_array().expect("bearer");
                if path == "/v1/me" {
                    // What the token is: needs a token, no scope.
                    assert!(scopes.is_empty(), "{method} {path}: {scopes:?}");
                    continue;
                }
                assert_eq!(scopes.len(), 1, "{method} {path}: {scopes:?}");
                assert!(scopes[0].as_str().is_some_and(|s| names.contains(&s)), "{method} {path}: {scopes:?}");
                assert!(operation["responses"]["403"].is_object(), "{method} {path}");
            }
        }
        assert!(operations >= 8, "{operations} operations");
    }
}
