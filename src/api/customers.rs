//! `/v1/customers`: "where is this customer in the connect lifecycle?", and
//! customers filtered by state, time and institution.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::IntoParams;

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::model::{ConsentView, CustomerLifecycle, CustomerPage, CustomerSummary};
use super::params::{
    CustomerPath, PageParams, Params, ProgramFilter, decode_cursor, encode_cursor, parse_limit, parse_state,
    parse_time, valid_customer_id, valid_institution_id,
};
use crate::error::{ApiError, ErrorBody};
use crate::event::CustomerId;
use crate::lifecycle::{AuthState, ConsentState};
use crate::program::Programs;
use crate::store::{erasure, read};

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

/// The id of a customer connectflow knows, else a 404 (a 410 for an
/// erased one). A customer of another program than the principal's is not
/// known: the same 404, body included, as a customer nobody ever saw.
pub(super) async fn known_customer(
    pool: &PgPool,
    customer_id: CustomerId,
    principal: &Principal,
) -> Result<String, ApiError> {
    let customer_id = customer_id.to_string();
    if read::customer_exists(pool, &customer_id, principal.visible(None)?.as_deref()).await? {
        Ok(customer_id)
    } else {
        Err(absent_customer(pool, &customer_id, principal).await)
    }
}

/// Why a customer the principal cannot see has no answer: 410 when it was
/// erased (a tombstone of a program the principal sees), else 404.
pub(super) async fn absent_customer(pool: &PgPool, customer_id: &str, principal: &Principal) -> ApiError {
    let visible = match principal.visible(None) {
        Ok(visible) => visible,
        Err(err) => return err,
    };
    match erasure::erased(pool, customer_id, visible.as_deref()).await {
        Ok(Some(erased)) => ApiError::Gone { customer_id: customer_id.to_owned(), erased_at: erased.erased_at },
        Ok(None) => customer_not_found(customer_id),
        Err(err) => err.into(),
    }
}

/// The 404 of every customer route: the same for a customer of another
/// program as for one nobody ever saw.
pub(super) fn customer_not_found(customer_id: &str) -> ApiError {
    ApiError::NotFound(format!("customer {customer_id} not found"))
}

/// The lifecycle document of a stored lifecycle at `now`, its expiry fields
/// from the customer's program's authorization period.
pub(super) fn lifecycle_document(
    programs: &Programs,
    customer_id: String,
    stored: read::StoredLifecycle,
    now: DateTime<Utc>,
) -> CustomerLifecycle {
    let policy = programs.authorization(&stored.program_id);
    let read::StoredLifecycle { lifecycle, version, updated_at, program_id, expiry_warnings } = stored;
    CustomerLifecycle::new(customer_id, program_id, lifecycle, version, updated_at, policy, now)
        .with_expiry_warnings(expiry_warnings)
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
) -> Result<(Extension<Items>, Json<CustomerLifecycle>), ApiError> {
    principal.require(Scope::Read)?;
    let customer_id = valid_customer_id(&customer_id)?.to_string();
    let Some(stored) = read::lifecycle(&state.lookup_pool, &customer_id, principal.visible(None)?.as_deref()).await?
    else {
        return Err(absent_customer(&state.read_pool, &customer_id, &principal).await);
    };
    let answer = lifecycle_document(&state.programs, customer_id, stored, Utc::now());
    Ok((Extension(Items(1)), Json(answer)))
}

/// Customers, filtered by state and update time.
#[utoipa::path(
    get,
    path = "/v1/customers",
    tag = "query",
    security(("bearer" = ["read"])),
    params(ListFilters, ProgramFilter, PageParams),
    responses(
        (status = 200, description = "A page of customers", body = CustomerPage),
        (status = 400, description = "Unknown state name, invalid time, limit or cursor", body = ErrorBody),
    )
)]
pub async fn list_customers(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Params(params): Params<ListFilters>,
    Params(program): Params<ProgramFilter>,
    Params(page): Params<PageParams>,
) -> Result<(Extension<Items>, Json<CustomerPage>), ApiError> {
    principal.require(Scope::Read)?;
    let programs = principal.visible(program.program_id.as_deref())?;
    let expires_before = parse_time("authorization_expires_before", params.authorization_expires_before.as_deref())?;
    let filter = read::CustomerFilter {
        consent: parse_state::<ConsentState>("consent", params.consent.as_deref())?,
        authentication: parse_state::<AuthState>("authentication", params.authentication.as_deref())?,
        updated_since: parse_time("updated_since", params.updated_since.as_deref())?,
        authorized_before: expires_before.map(|before| authorized_before(&state.programs, before)),
        institution_id: params.institution_id.map(valid_institution_id).transpose()?,
        first_event_since: parse_time("first_event_since", params.first_event_since.as_deref())?,
        first_event_until: parse_time("first_event_until", params.first_event_until.as_deref())?,
        programs,
    };
    let limit = parse_limit(page.limit.as_deref())?;
    let after = page.cursor.as_deref().map(decode_cursor).transpose()?;
    let (rows, next) = read::customers(&state.read_pool, &filter, after.as_ref(), limit).await?;
    let now = Utc::now();
    let customers: Vec<CustomerSummary> = rows
        .into_iter()
        .map(|listed| CustomerSummary {
            consent: ConsentView::new(listed.lifecycle.consent, state.programs.authorization(&listed.program_id), now)
                .with_expiry_warnings(listed.expiry_warnings),
            customer_id: listed.customer_id,
            program_id: listed.program_id,
            authentication: listed.lifecycle.authentication,
            last_event: listed.lifecycle.last_event,
            updated_at: listed.updated_at,
        })
        .collect();
    Ok((
        Extension(Items(customers.len())),
        Json(CustomerPage { customers, next_cursor: next.as_ref().map(encode_cursor) }),
    ))
}

/// "Authorization lapses before `before`" as a cut-off per program: each
/// program's customers were authorized before `before` minus its period. A
/// program whose authorizations never lapse gets a cut-off nobody precedes.
fn authorized_before(programs: &Programs, before: DateTime<Utc>) -> read::AuthorizedBefore {
    // Before any authorization connectflow could have recorded.
    let never = DateTime::<Utc>::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let cutoff = |policy: crate::lifecycle::AuthorizationPolicy| policy.authorized_before(before).unwrap_or(never);
    read::AuthorizedBefore {
        programs: programs.iter().map(|p| p.id.to_string()).collect(),
        cutoffs: programs.iter().map(|p| cutoff(p.authorization)).collect(),
        otherwise: cutoff(programs.default_authorization()),
    }
}
