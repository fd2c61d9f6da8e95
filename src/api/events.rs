//! `/v1/customers/{customer_id}/events`: the history behind a lifecycle.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::customers::known_customer;
use super::model::EventPage;
use super::params::{CustomerPath, PageParams, Params, decode_cursor, encode_cursor, parse_limit, valid_customer_id};
use crate::error::{ApiError, ErrorBody};
use crate::store::{history, read};

/// A customer's recorded events, and where their recorded history starts
/// (`history_starts_at`) when older events were folded into the lifecycle.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/events",
    tag = "query",
    security(("bearer" = ["read"])),
    params(CustomerPath, PageParams),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Invalid customer id, limit or cursor", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
    )
)]
pub async fn get_events(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Path(CustomerPath { customer_id }): Path<CustomerPath>,
    Params(params): Params<PageParams>,
) -> Result<(Extension<Items>, Json<EventPage>), ApiError> {
    principal.require(Scope::Read)?;
    let customer_id = valid_customer_id(&customer_id)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let customer_id = known_customer(&state.read_pool, customer_id, &principal).await?;
    let (events, next) = read::events(&state.read_pool, &customer_id, after.as_ref(), limit).await?;
    let history_starts_at = history::history_starts_at(&state.read_pool, &customer_id).await?;
    let items = Items(events.len());
    Ok((Extension(items), Json(EventPage { events, next_cursor: next.as_ref().map(encode_cursor), history_starts_at })))
}
