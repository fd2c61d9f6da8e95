//! `/v1/audit`: the access log, for the `audit` scope.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::params::{Params, decode_cursor, encode_cursor, parse_limit, parse_time, valid_customer_id};
use crate::error::{ApiError, ErrorBody};
use crate::store::access_log::{self, AccessFilter, AccessRecord};

/// What the audit narrows to (paging: [`PageParams`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only requests naming this customer.
    #[param(pattern = "^[0-9]{1,22}$")]
    customer_id: Option<String>,
    /// Only requests made with this token (`tok_...`, `bootstrap-...`).
    #[param(pattern = "^[!-~]{1,64}$", min_length = 1, max_length = 64)]
    token_id: Option<String>,
    /// RFC 3339 time: requests at or after it.
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// RFC 3339 time: requests before it.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

/// Paging through the access log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditPageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page (opaque).
    #[param(pattern = r"^313a(3[0-9]){1,16}3a(3[0-9]){1,18}$")]
    cursor: Option<String>,
}

/// One page of the access log, in time order.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The requests, oldest first.
    pub records: Vec<AccessRecord>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Who read what: one record per `/v1` request (this one included, once
/// written). A token limited to some programs sees the requests made within
/// them only.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    security(("bearer" = ["audit"])),
    params(AuditParams, AuditPageParams),
    responses(
        (status = 200, description = "A page of the access log", body = AuditPage),
        (status = 400, description = "Invalid customer id, token id, time, limit or cursor", body = ErrorBody),
    )
)]
pub async fn get_audit(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Params(params): Params<AuditParams>,
    Params(page): Params<AuditPageParams>,
) -> Result<(Extension<Items>, Json<AuditPage>), ApiError> {
    principal.require(Scope::Audit)?;
    let customer_id = params.customer_id.as_deref().map(valid_customer_id).transpose()?.map(|id| id.to_string());
    let token_id = params.token_id;
    if token_id.as_ref().is_some_and(|id| id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(ApiError::BadRequest("token_id must be 1 to 64 printable ASCII characters".into()));
    }
    let filter = AccessFilter {
        customer_id,
        token_id,
        since: parse_time("since", params.since.as_deref())?,
        until: parse_time("until", params.until.as_deref())?,
        within_programs: principal.programs.only().map(|set| set.iter().map(|p| p.to_string()).collect()),
    };
    let limit = parse_limit(page.limit.as_deref())?;
    let after = page
        .cursor
        .as_deref()
        .map(decode_cursor)
        .transpose()?
        .map(|(at, id)| {
            id.parse::<i64>().map(|id| (at, id)).map_err(|_| ApiError::BadRequest("malformed cursor".into()))
        })
        .transpose()?;
    let (records, next) = access_log::page(&state.read_pool, &filter, after, limit).await?;
    let next_cursor = next.map(|(at, id)| encode_cursor(&(at, id.to_string())));
    Ok((Extension(Items(records.len())), Json(AuditPage { records, next_cursor })))
}
