//! `/v1/institutions`: each institution's health as the latest evaluation
//! of `consume`'s health job left it (`docs/lifecycle.md`, "Institution
//! health"). Aggregates of every program's sessions, with no customer in
//! them: a token with scope `stats` sees every institution, whatever its
//! programs (docs/privacy.md).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::params::{Params, parse_limit, parse_state, valid_institution_id};
use crate::error::{ApiError, ErrorBody};
use crate::institution::{InstitutionHealth, InstitutionStatus};
use crate::store::institutions;

/// An institution in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct InstitutionPath {
    /// Finicity's institution id (1 to 64 printable ASCII characters).
    #[param(pattern = r"^[ -~]{1,64}$", min_length = 1, max_length = 64)]
    pub institution_id: String,
}

/// The listing's filter and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstitutionParams {
    /// Only institutions of this status.
    #[param(value_type = Option<InstitutionStatus>)]
    status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque: hex of the last
    /// institution id).
    #[param(pattern = r"^693a([2-6][0-9a-f]|7[0-9a-e]){1,64}$")]
    cursor: Option<String>,
}

/// A page of institutions, by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstitutionPage {
    /// The institutions evaluated (every one with a session since
    /// connectflow started evaluating), by id; empty before the first
    /// evaluation.
    pub institutions: Vec<InstitutionHealth>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Every institution's health, by id.
#[utoipa::path(
    get,
    path = "/v1/institutions",
    tag = "stats",
    security(("bearer" = ["stats"])),
    params(InstitutionParams),
    responses(
        (status = 200, description = "A page of institutions", body = InstitutionPage),
        (status = 400, description = "Invalid status, limit or cursor", body = ErrorBody),
    )
)]
pub async fn list_institutions(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Params(params): Params<InstitutionParams>,
) -> Result<(Extension<Items>, Json<InstitutionPage>), ApiError> {
    principal.require(Scope::Stats)?;
    let status = parse_state::<InstitutionStatus>("status", params.status.as_deref())?;
    let limit = parse_limit(params.limit.as_deref())?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = institutions::list(&state.read_pool, status, after.as_deref(), limit).await?;
    let next_cursor = page.next_after.as_deref().map(encode_cursor);
    Ok((
        Extension(Items(page.institutions.len())),
        Json(InstitutionPage { institutions: page.institutions, next_cursor }),
    ))
}

/// One institution's health.
#[utoipa::path(
    get,
    path = "/v1/institutions/{institution_id}",
    tag = "stats",
    security(("bearer" = ["stats"])),
    params(InstitutionPath),
    responses(
        (status = 200, description = "The institution's health", body = InstitutionHealth),
        (status = 404, description = "No session ever ended at this institution (or none was evaluated yet); also an id no institution can have", body = ErrorBody),
    )
)]
pub async fn get_institution(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Path(InstitutionPath { institution_id }): Path<InstitutionPath>,
) -> Result<(Extension<Items>, Json<InstitutionHealth>), ApiError> {
    principal.require(Scope::Stats)?;
    let not_found = || ApiError::NotFound("institution not found".into());
    // An id outside the event schema's limits names no institution connectflow knows.
    let institution_id = valid_institution_id(institution_id).map_err(|_| not_found())?;
    let found = institutions::of(&state.read_pool, &[institution_id.as_str()]).await?.pop();
    let health = found.ok_or_else(not_found)?;
    Ok((Extension(Items(1)), Json(health)))
}

fn encode_cursor(institution_id: &str) -> String {
    hex::encode(format!("i:{institution_id}"))
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    let malformed = || ApiError::BadRequest("cursor is malformed".into());
    let bytes = hex::decode(cursor).map_err(|_| malformed())?;
    let text = String::from_utf8(bytes).map_err(|_| malformed())?;
    let id = text.strip_prefix("i:").ok_or_else(malformed)?;
    valid_institution_id(id.to_owned()).map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor("101732")).ok().as_deref(), Some("101732"));
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor(&hex::encode("v:101732")).is_err());
        assert!(decode_cursor(&hex::encode("i:")).is_err());
        assert!(decode_cursor(&hex::encode(format!("i:{}", "1".repeat(65)))).is_err());
        assert!(decode_cursor(&hex::encode("i:a\u{7f}")).is_err());
    }
}
