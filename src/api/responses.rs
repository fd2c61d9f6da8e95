//! What every API route has in common, described once for the OpenAPI
//! document: each sits behind the bearer check ([`super::auth`]) and may
//! fail inside, so each gets the 401, 403 and 500 answers, and the 503 of an
//! unavailable database unless it documents a 503 of its own. A handler's
//! annotation lists only its own answers, and its security requirement:
//! `bearer` with the scope it needs (`security(("bearer" = ["read"]))`).

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};

/// The answers every route shares: status, description.
const SHARED: [(&str, &str); 4] = [
    ("401", "Missing or invalid credentials"),
    ("403", "The token lacks the route's scope (the message names it)"),
    ("500", "Internal error"),
    (
        "503",
        "The database is unavailable (`unavailable`), a statement ran past the API's statement timeout \
         (`timeout`), or too many statistics requests are computed at once (`busy`); retry (Retry-After)",
    ),
];

/// Adds the shared answers to every operation of `openapi` (the API's routes
/// alone), and the `bearer` requirement to one that states none (every
/// route states its scope; the test in `api` checks that).
pub(super) fn describe_shared(openapi: &mut OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let names_customer = path.contains("{customer_id}");
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            describe(operation, names_customer);
        }
    }
}

/// The answer of every route naming a customer who was erased.
const GONE: (&str, &str) = (
    "410",
    "The customer was erased (`error.erased_at` says when): connectflow holds nothing about them but the \
     compliance record (docs/privacy.md). Another program's erased customer is a 404 like any unknown one",
);

fn error_answer(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    ResponseBuilder::new().description(description).content("application/json", body).build().into()
}

fn describe(operation: &mut Operation, names_customer: bool) {
    let security = operation.security.get_or_insert_with(Vec::new);
    if security.is_empty() {
        security.push(SecurityRequirement::new("bearer", Vec::<String>::new()));
    }
    let gone = names_customer.then_some(GONE);
    for (status, description) in SHARED.into_iter().chain(gone) {
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| error_answer(description));
    }
}
