//! `/v1/customers/{customer_id}/export`: everything connectflow holds about
//! a customer in one document, for the customer's right to know.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use chrono::Utc;

use super::ApiState;
use super::access::Items;
use super::auth::{Principal, Scope};
use super::changes::decode_changes;
use super::customers::{absent_customer, lifecycle_document};
use super::model::{CustomerExport, EXPORT_MAX_ITEMS, ExportTruncated, ExportedRevocation};
use super::params::{CustomerPath, valid_customer_id};
use crate::error::{ApiError, ErrorBody};
use crate::store::export::{self, CustomerRecords};
use crate::store::revocations::RecordedRevocation;

/// Everything connectflow holds about a customer.
///
/// One document read from one snapshot of the database: the lifecycle (as
/// `/lifecycle` answers it), every recorded event (as `/events` lists them),
/// every lifecycle change (as `/changes` lists them), the revocation
/// requests recorded for the customer, and the access-log records of the
/// API requests that named the customer (for a token of some programs,
/// those made within them). Each list holds at most 10,000 items; a longer
/// one is cut there, oldest kept, and flagged in `truncated` (the paged
/// routes give the rest).
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}/export",
    tag = "query",
    security(("bearer" = ["read"])),
    params(CustomerPath),
    responses(
        (status = 200, description = "Everything connectflow holds about the customer", body = CustomerExport),
        (status = 400, description = "Invalid customer id", body = ErrorBody),
        (status = 404, description = "Customer not found", body = ErrorBody),
    )
)]
pub async fn get_export(
    principal: Principal,
    State(state): State<Arc<ApiState>>,
    Path(CustomerPath { customer_id }): Path<CustomerPath>,
) -> Result<(Extension<Items>, Json<CustomerExport>), ApiError> {
    principal.require(Scope::Read)?;
    let customer_id = valid_customer_id(&customer_id)?.to_string();
    let max_items = i64::try_from(EXPORT_MAX_ITEMS).unwrap_or(i64::MAX);
    let exported_at = Utc::now();
    let visible = principal.visible(None)?;
    let Some(records) = export::customer_records(&state.read_pool, &customer_id, visible.as_deref(), max_items).await?
    else {
        return Err(absent_customer(&state.read_pool, &customer_id, &principal).await);
    };
    let CustomerRecords { lifecycle, snapshot, events, changes, revocations, access_log } = records;
    let (history_starts_at, snapshot) = snapshot.unzip();
    let program_id = lifecycle.program_id.clone();
    let truncated = ExportTruncated {
        events: events.truncated,
        changes: changes.truncated,
        revocations: revocations.truncated,
        access_log: access_log.truncated,
    };
    let document = CustomerExport {
        lifecycle: lifecycle_document(&state.programs, customer_id.clone(), lifecycle, exported_at),
        customer_id,
        program_id,
        exported_at,
        history_starts_at,
        snapshot,
        events: events.items,
        changes: decode_changes(changes.items)?,
        revocations: revocations.items.into_iter().map(exported_revocation).collect(),
        access_log: access_log.items,
        truncated,
    };
    Ok((Extension(Items(1)), Json(document)))
}

fn exported_revocation(recorded: RecordedRevocation) -> ExportedRevocation {
    let RecordedRevocation { idempotency_key, event_id, occurred_at, token_id, token_name, created_at } = recorded;
    ExportedRevocation { idempotency_key, event_id, occurred_at, token_id, token_name, created_at }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use serde_json::Value;

    use super::*;
    use crate::api::model::CustomerLifecycle;
    use crate::lifecycle::{AuthorizationPolicy, Lifecycle};
    use crate::store::access_log::AccessRecord;

    fn document() -> CustomerExport {
        let at = DateTime::UNIX_EPOCH;
        CustomerExport {
            customer_id: "1".into(),
            program_id: "default".into(),
            exported_at: at,
            history_starts_at: None,
            snapshot: None,
            lifecycle: CustomerLifecycle::new(
                "1".into(),
                "default".into(),
                Lifecycle::default(),
                0,
                at,
                AuthorizationPolicy::default(),
                at,
            ),
            events: vec![serde_json::json!({"event_id": "e1"})],
            changes: Vec::new(),
            revocations: vec![exported_revocation(RecordedRevocation {
                idempotency_key: "k-1".into(),
                event_id: "e1".into(),
                occurred_at: at,
                token_id: Some("tok_1".into()),
                token_name: Some("desk".into()),
                created_at: at,
            })],
            access_log: vec![AccessRecord {
                at,
                token_id: "tok_1".into(),
                programs: None,
                method: "GET".into(),
                route: "/v1/customers/{customer_id}/lifecycle".into(),
                customer_id: Some("1".into()),
                status: 200,
                items: Some(1),
            }],
            truncated: ExportTruncated::default(),
        }
    }

    fn keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        keys.sort();
        keys
    }

    /// The OpenAPI document describes each field the export sends (and
    /// requires it), down to the revocation and the truncation flags.
    #[test]
    fn the_openapi_schema_names_every_field_sent() {
        let openapi = serde_json::to_value(crate::api::documented_routes().into_openapi()).expect("serialises");
        let schemas = &openapi["components"]["schemas"];
        let sent = serde_json::to_value(document()).expect("serialises");
        for (schema, value) in [
            ("CustomerExport", &sent),
            ("ExportedRevocation", &sent["revocations"][0]),
            ("ExportTruncated", &sent["truncated"]),
        ] {
            assert_eq!(keys(&schemas[schema]["properties"]), keys(value), "{schema}");
        }
        let mut required: Vec<String> =
            serde_json::from_value(schemas["CustomerExport"]["required"].clone()).expect("required fields");
        required.sort();
        assert_eq!(required, keys(&sent));
        let operation = &openapi["paths"]["/v1/customers/{customer_id}/export"]["get"];
        assert_eq!(operation["security"], serde_json::json!([{"bearer": ["read"]}]));
        assert!(operation["responses"]["404"].is_object(), "{operation}");
    }

    /// The document's order: who, when, the lifecycle, then the lists (new
    /// fields about the history go before `events`).
    #[test]
    fn the_document_reads_top_down() {
        let text = serde_json::to_string(&document()).expect("serialises");
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
        let order =
            ["customer_id", "program_id", "exported_at", "lifecycle", "events", "changes", "revocations", "access_log"];
        assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
        assert!(text.contains("\"exported_at\":\"1970-01-01T00:00:00.000Z\""), "{text}");
        assert!(!text.contains("sha256"), "{text}");
    }
}
