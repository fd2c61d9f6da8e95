//! The HTTP API under `/v1`: "where is this customer in the connect
//! lifecycle?", the history behind the answer, filtered listings, the
//! funnel's aggregates and revocations of consent.
//!
//! One file per resource ([`customers`], [`events`], [`changes`],
//! [`stats`], [`revocations`]); what they share lives beside them: the
//! bearer check ([`auth`]), what is read from the query string
//! ([`params`]), the error answers described once for the OpenAPI document
//! ([`responses`]) and the documents themselves ([`model`], pure types a
//! client can use). Listings use keyset pagination with opaque cursors, so
//! pages stay stable while rows are being updated.

mod auth;
mod changes;
mod customers;
mod events;
pub mod model;
pub mod params;
mod responses;
mod revocations;
mod stats;

use std::sync::Arc;

use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::ApiAuth;

use crate::lifecycle::AuthorizationPolicy;
use crate::publish::Publisher;

/// What the API's handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// Postgres pool.
    pub pool: PgPool,
    /// The accepted bearer tokens.
    pub auth: ApiAuth,
    /// How long authorizations last, for the expiry fields.
    pub authorization: AuthorizationPolicy,
    /// The events topic's producer, for revocations.
    pub publisher: Publisher,
}

/// Every `/v1` route, each behind the bearer check, documented.
pub fn routes(state: Arc<ApiState>) -> OpenApiRouter {
    let mut routes = OpenApiRouter::new()
        .routes(routes!(customers::get_lifecycle))
        .routes(routes!(events::get_events))
        .routes(routes!(changes::get_changes))
        .routes(routes!(customers::list_customers))
        .routes(routes!(revocations::revoke))
        .routes(routes!(stats::get_funnel))
        .routes(routes!(stats::get_timeseries))
        .routes(routes!(stats::get_institutions));
    responses::describe_shared(routes.get_openapi_mut());
    routes.route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token)).with_state(state)
}
