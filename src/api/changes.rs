//! `/v1/customers/{customer_id}/changes`: the lifecycle changes as
//! published on the changes topic, for a subscriber that missed records.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::customers::known_customer;
use super::model::ChangePage;
use super::params::{
    CustomerPath, Params, decode_version_cursor, encode_version_cursor, parse_limit, valid_customer_id,
};
use crate::change::LifecycleChange;
use crate::error::{ApiError, ErrorBody};
use crate::store::read;

/// Paging parameters of the changes listing: its cursor is a version.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangePageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque: hex of the last
    /// version on it).
    #[param(pattern = r"^763a(3[0-9]){1,18}$")]
    cursor: Option<String>,
}

/// A customer's lifecycle changes, as published on the lifecycle-changes
/// topic: for a subscriber that missed records to catch up.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/changes",
    tag = "query",
    security(("bearer" = ["read"])),
    params(CustomerPath, ChangePageParams),
    responses(
        (status = 200, description = "A page of changes, in version order", body = ChangePage),
        (status = 400, description = "Invalid customer id, limit or cursor", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
    )
)]
pub async fn get_changes(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Path(CustomerPath { customer_id }): Path<CustomerPath>,
    Params(params): Params<ChangePageParams>,
) -> Result<(Extension<Items>, Json<ChangePage>), ApiError> {
    principal.require(Scope::Read)?;
    let customer_id = valid_customer_id(&customer_id)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let after = params.cursor.as_deref().map(decode_version_cursor).transpose()?;
    let customer_id = known_customer(&state.read_pool, customer_id, &principal).await?;
    let (changes, next) = read::changes(&state.read_pool, &customer_id, after, limit).await?;
    let changes = decode_changes(changes)?;
    Ok((Extension(Items(changes.len())), Json(ChangePage { changes, next_cursor: next.map(encode_version_cursor) })))
}

/// Recorded changes (JSON text, as published) as the change records.
pub(super) fn decode_changes(recorded: Vec<String>) -> Result<Vec<LifecycleChange>, ApiError> {
    recorded
        .into_iter()
        .map(|text| serde_json::from_str(&text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ApiError::Internal(anyhow::Error::from(err).context("decoding a recorded change")))
}
