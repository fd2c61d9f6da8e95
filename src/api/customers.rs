//! `/v1/customers`: "where is this customer in the connect lifecycle?", and
//! customers filtered by state, time and institution.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::IntoParams;

use super::ApiState;
use super::auth::{Principal, Scope};
use super::model::{ConsentView, CustomerLifecycle, CustomerPage, CustomerSummary};
use super::params::{
    CustomerPath, PageParams, Params, decode_cursor, encode_cursor, parse_limit, parse_state, parse_time,
    valid_customer_id, valid_institution_id,
};
use crate::error::{ApiError, ErrorBody};
use crate::event::CustomerId;
use crate::lifecycle::{AuthState, ConsentState};
use crate::store::read;

/// Listing filters (paging: [`PageParams`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListFilters {
    /// Only customers in this consent state (`none`, `granted`, `revoked`).
    #[param(value_type = Option<ConsentState>)]
    consent: Option<String>,
    /// Only customers in this authentication state (`not_started`,
    /// `in_progress`, `mfa_challenge`, `authenticated`, `failed`, `abandoned`).
    #[param(value_type = Option<AuthState>)]
    authentication: Option<String>,
    /// Only customers updated at or after this RFC 3339 time.
    #[param(value_type = Option<String>, format = DateTime)]
    updated_since: Option<String>,
    /// Only customers whose current authorization (`consent.authorization_expires_at`)
    /// lapses before this RFC 3339 time, already lapsed ones included: whom
    /// to ask to reauthorize in time. None match when authorizations do not
    /// lapse (`CONNECTFLOW_AUTHORIZATION_DAYS=0`).
    #[param(value_type = Option<String>, format = DateTime)]
    authorization_expires_before: Option<String>,
    /// Only customers whose institution chosen last (`funnel.institution_id`,
    /// what `/v1/stats/institutions` counts them under) is this one.
    #[param(pattern = r"^[ -~]{1,64}$", min_length = 1, max_length = 64)]
    institution_id: Option<String>,
    /// Only customers whose first event occurred at or after this RFC 3339
    /// time (the `since` of `/v1/stats`).
    #[param(value_type = Option<String>, format = DateTime)]
    first_event_since: Option<String>,
    /// Only customers whose first event occurred before this RFC 3339 time
    /// (the `until` of `/v1/stats`).
    #[param(value_type = Option<String>, format = DateTime)]
    first_event_until: Option<String>,
}

/// The id of a customer connectflow knows, else a 404.
pub(super) async fn known_customer(pool: &PgPool, customer_id: CustomerId) -> Result<String, ApiError> {
    let customer_id = customer_id.to_string();
    if read::customer_exists(pool, &customer_id).await? {
        Ok(customer_id)
    } else {
        Err(ApiError::NotFound(format!("customer {customer_id} not found")))
    }
}

/// A customer's lifecycle.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/lifecycle",
    tag = "query",
    security(("bearer" = ["read"])),
    params(CustomerPath),
    responses(
        (status = 200, description = "The customer's lifecycle", body = CustomerLifecycle),
        (status = 400, description = "Invalid customer id", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
    )
)]
pub async fn get_lifecycle(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Path(CustomerPath { customer_id }): Path<CustomerPath>,
) -> Result<Json<CustomerLifecycle>, ApiError> {
    principal.require(Scope::Read)?;
    let customer_id = valid_customer_id(&customer_id)?.to_string();
    let (lifecycle, version, updated_at) = read::lifecycle(&state.pool, &customer_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("customer {customer_id} not found")))?;
    Ok(Json(CustomerLifecycle::new(customer_id, lifecycle, version, updated_at, state.authorization, Utc::now())))
}

/// Customers, filtered by state and update time.
#[utoipa::path(
    get,
    path = "/v1/customers",
    tag = "query",
    security(("bearer" = ["read"])),
    params(ListFilters, PageParams),
    responses(
        (status = 200, description = "A page of customers", body = CustomerPage),
        (status = 400, description = "Unknown state name, invalid time, limit or cursor", body = ErrorBody),
    )
)]
pub async fn list_customers(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Params(params): Params<ListFilters>,
    Params(page): Params<PageParams>,
) -> Result<Json<CustomerPage>, ApiError> {
    principal.require(Scope::Read)?;
    let expires_before = parse_time("authorization_expires_before", params.authorization_expires_before.as_deref())?;
    let filter = read::CustomerFilter {
        consent: parse_state::<ConsentState>("consent", params.consent.as_deref())?,
        authentication: parse_state::<AuthState>("authentication", params.authentication.as_deref())?,
        updated_since: parse_time("updated_since", params.updated_since.as_deref())?,
        authorized_before: expires_before.and_then(|before| state.authorization.authorized_before(before)),
        institution_id: params.institution_id.map(valid_institution_id).transpose()?,
        first_event_since: parse_time("first_event_since", params.first_event_since.as_deref())?,
        first_event_until: parse_time("first_event_until", params.first_event_until.as_deref())?,
    };
    let limit = parse_limit(page.limit.as_deref())?;
    let after = page.cursor.as_deref().map(decode_cursor).transpose()?;
    if expires_before.is_some() && filter.authorized_before.is_none() {
        // Authorizations do not lapse (or the time is before any that could).
        return Ok(Json(CustomerPage { customers: Vec::new(), next_cursor: None }));
    }
    let (rows, next) = read::customers(&state.pool, &filter, after.as_ref(), limit).await?;
    let now = Utc::now();
    let customers = rows
        .into_iter()
        .map(|(customer_id, lifecycle, updated_at)| CustomerSummary {
            customer_id,
            consent: ConsentView::new(lifecycle.consent, state.authorization, now),
            authentication: lifecycle.authentication,
            last_event: lifecycle.last_event,
            updated_at,
        })
        .collect();
    Ok(Json(CustomerPage { customers, next_cursor: next.as_ref().map(encode_cursor) }))
}
