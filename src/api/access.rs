//! The access log's middleware: one record per authenticated `/v1`
//! request (time, token, programs in scope, method, route template, the
//! customer the route names, status, items returned; never response data),
//! queued for [`crate::access_log`]'s writer. A request that finds no
//! place in the queue within a statement's time is answered 503 without
//! being handled (fail closed).

use std::sync::Arc;

use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::ApiState;
use super::auth::Principal;
use crate::access_log::Reserved;
use crate::error::ApiError;
use crate::event::CustomerId;
use crate::program::ProgramId;
use crate::store::access_log::AccessRecord;

/// How many items an answer holds, set by the handler on its response (a
/// lifecycle is 1, a page its length) for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Items(pub usize);

/// The status logged for a request whose client went away before it was
/// answered (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// A record waiting for its request's end: sent with the status when the
/// request is answered, or with 499 if the request is dropped unanswered.
struct Pending {
    place: Option<Reserved>,
    record: AccessRecord,
}

impl Pending {
    fn finish(mut self, status: u16, items: Option<Items>) {
        self.record.status = status;
        self.record.items = items.and_then(|Items(n)| i32::try_from(n).ok());
        if let Some(place) = self.place.take() {
            place.send(self.record.clone());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            let mut record = self.record.clone();
            record.status = CLIENT_CLOSED;
            place.send(record);
        }
    }
}

/// Middleware, inside the bearer check: reserves the request's place in the
/// access log's queue (waiting for one while it is full, at most a
/// statement's time; else answers 503), runs the handler, queues the record.
pub async fn log_access(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return ApiError::Internal(anyhow::anyhow!("the access log runs outside require_token")).into_response();
    };
    let Some(place) = state.access_log.reserve().await else {
        return ApiError::Unavailable { message: "the access log is behind; retry later", retry_after_s: 1 }
            .into_response();
    };
    let route = request.extensions().get::<MatchedPath>().map_or("", MatchedPath::as_str).to_owned();
    let record = AccessRecord {
        at: crate::event::truncate_to_millis(Utc::now()),
        token_id: principal.token_id.to_string(),
        programs: programs_in_scope(&principal, request.uri()),
        method: method_name(request.method()),
        customer_id: named_customer(&route, request.uri().path()),
        route,
        status: 0,
        items: None,
    };
    let pending = Pending { place: Some(place), record };
    let response = next.run(request).await;
    let items = response.extensions().get::<Items>().copied();
    pending.finish(response.status().as_u16(), items);
    response
}

/// The programs a request may see: the token's, narrowed by a valid
/// `program_id=` it holds (the handler refuses any other with 403).
fn programs_in_scope(principal: &Principal, uri: &Uri) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Filter {
        program_id: Option<String>,
    }
    let requested = Query::<Filter>::try_from_uri(uri)
        .ok()
        .and_then(|Query(filter)| filter.program_id)
        .and_then(|id| ProgramId::parse(&id).ok());
    match requested {
        Some(program) if principal.programs.allows(&program) => Some(vec![program.to_string()]),
        _ => principal.programs.only().map(|set| set.iter().map(|p| p.to_string()).collect()),
    }
}

/// The customer a route names (`{customer_id}` in its template), when the
/// path holds a valid customer id there.
fn named_customer(route: &str, path: &str) -> Option<String> {
    route
        .split('/')
        .zip(path.split('/'))
        .find(|(template, _)| *template == "{customer_id}")
        .map(|(_, id)| id)
        .filter(|id| CustomerId::is_valid(id))
        .map(str::to_owned)
}

fn method_name(method: &Method) -> String {
    // Bounded: axum routes only the methods of the routes.
    method.as_str().chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_customer_comes_from_the_template_position() {
        let route = "/v1/customers/{customer_id}/lifecycle";
        assert_eq!(named_customer(route, "/v1/customers/1005061234/lifecycle").as_deref(), Some("1005061234"));
        assert_eq!(named_customer(route, "/v1/customers/12x/lifecycle"), None, "not a customer id");
        assert_eq!(named_customer("/v1/customers", "/v1/customers"), None);
        assert_eq!(named_customer("/v1/stats/funnel", "/v1/stats/funnel"), None);
    }
}
