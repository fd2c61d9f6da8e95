//! `/v1/customers/{customer_id}/events`: the history behind a lifecycle.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiState;
use super::model::EventPage;
use super::params::{Params, decode_cursor, encode_cursor, parse_limit, valid_customer_id};
use super::responses::ReadErrors;
use crate::error::{ApiError, ErrorBody};
use crate::store::read;

/// Paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque: hex of the last
    /// row's key).
    #[param(pattern = r"^313a(3[0-9]){1,16}3a([2-6][0-9a-f]|7[0-9a-e]){1,128}$")]
    cursor: Option<String>,
}

/// A customer's recorded events.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/events",
    tag = "query",
    params(("customer_id" = String, Path, description = "Finicity customer id, 1 to 22 digits", pattern = "^[0-9]{1,22}$", min_length = 1, max_length = 22), PageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Invalid customer id, limit or cursor", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
        ReadErrors,
    )
)]
pub async fn get_events(
    State(state): State<Arc<ApiState>>,
    Path(customer_id): Path<String>,
    Params(params): Params<PageParams>,
) -> Result<Json<EventPage>, ApiError> {
    let customer_id = valid_customer_id(&customer_id)?.to_string();
    let limit = parse_limit(params.limit.as_deref())?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    if !read::customer_exists(&state.pool, &customer_id).await? {
        return Err(ApiError::NotFound(format!("customer {customer_id} not found")));
    }
    let (events, next) = read::events(&state.pool, &customer_id, after.as_ref(), limit).await?;
    Ok(Json(EventPage { events, next_cursor: next.as_ref().map(encode_cursor) }))
}
