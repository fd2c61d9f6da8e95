//! `/v1/me`: what the calling token is and may see, for clients that adapt
//! to it (the console's program picker and its "missing scope" notes).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::access::Items;
use super::auth::Principal;
use crate::error::ApiError;

/// A program the token sees.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgramView {
    /// The program's id.
    #[schema(example = "acme-card")]
    pub id: String,
    /// Its display name.
    #[schema(example = "Acme Card")]
    pub name: String,
}

/// The calling token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The token's id (`tok_...`, `bootstrap-...`).
    pub token_id: String,
    /// The token's name.
    pub token_name: String,
    /// What it may do: `read`, `stats`, `revoke`, `audit`.
    pub scopes: Vec<String>,
    /// Whether it sees every program, present and future.
    pub all_programs: bool,
    /// The programs it sees among those this deployment declares, in id
    /// order.
    pub programs: Vec<ProgramView>,
}

/// The calling token: its scopes and the programs it sees. Needs no scope.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "query",
    security(("bearer" = [])),
    responses((status = 200, description = "The calling token", body = Me))
)]
pub async fn get_me(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
) -> Result<(Extension<Items>, Json<Me>), ApiError> {
    let programs = state
        .programs
        .iter()
        .filter(|program| principal.programs.allows(&program.id))
        .map(|program| ProgramView { id: program.id.to_string(), name: program.name.clone() })
        .collect();
    let me = Me {
        token_id: principal.token_id.to_string(),
        token_name: principal.token_name.to_string(),
        scopes: principal.scopes.iter().map(|scope| scope.as_str().to_owned()).collect(),
        all_programs: principal.programs.only().is_none(),
        programs,
    };
    Ok((Extension(Items(1)), Json(me)))
}
