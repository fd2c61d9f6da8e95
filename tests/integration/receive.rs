//! The webhook receiver on real Kafka.

use serde_json::{Value, json};

use crate::helpers::{AppOptions, OLD_PARTNER_SECRET, http_settings, spawn_app, spawn_app_with, unique_kafka_args};
use crate::kafka_util::{count_records, read_all};

fn added_body(event_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "customerId": "1005061234",
        "consumerId": "0bf46322c167b562e6cbed9d40e19a4c",
        "eventType": "added",
        "eventId": event_id,
        "payload": {
            "institutionId": "101732",
            "oauth": true,
            "accounts": [{
                "id": "1045121390", "number": "4111111111111111", "realAccountNumberLast4": "1111",
                "name": "Checking", "balance": 501.24, "type": "checking", "status": "active",
                "institutionId": "101732", "institutionLoginId": 1022599285_i64, "aggregationStatusCode": 0,
                "detail": {"availableBalanceAmount": 500.0}
            }]
        },
        "webhookData": {"ref": "partner-ref-1"}
    }))
    .expect("serialises")
}

#[tokio::test]
async fn a_signed_added_event_is_published_once_with_key_headers_and_value() {
    let app = spawn_app().await;
    let body = added_body("1764000000123-28ebb24c66699bf3c77f04b1");
    let response = app.post_webhook(&body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer, json!({"status": "accepted", "event_id": "1764000000123-28ebb24c66699bf3c77f04b1"}));

    let records = read_all(&app.kafka.brokers, &app.kafka.events_topic);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key.as_deref(), Some(&b"1005061234"[..]));
    assert_eq!(record.header("event_id"), Some("1764000000123-28ebb24c66699bf3c77f04b1"));
    assert_eq!(record.header("event_type"), Some("added"));
    assert_eq!(record.header("schema"), Some("connectflow.connect_event.v1"));
    let value: Value = serde_json::from_slice(&record.value).expect("JSON value");
    assert_eq!(value["schema"], "connectflow.connect_event.v1");
    assert_eq!(value["customer_id"], "1005061234");
    assert_eq!(value["institution_login_id"], "1022599285");
    assert_eq!(value["occurred_at"], "2025-11-24T16:00:00.123Z");
    assert_eq!(value["accounts"][0]["last4"], "1111");
    assert_eq!(value["webhook_data"], json!({"ref": "partner-ref-1"}));
    let text = String::from_utf8_lossy(&record.value);
    assert!(!text.contains("4111111111111111") && !text.contains("501.24") && !text.contains("detail"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_delivery_is_answered_the_same_way() {
    let app = spawn_app().await;
    let body = added_body("1764000000123-aaaaaaaaaaaaaaaaaaaaaaaa");
    let first: Value = app.post_webhook(&body).await.json().await.expect("json");
    let second: Value = app.post_webhook(&body).await.json().await.expect("json");
    assert_eq!(first, second);
    assert_eq!(first["status"], "accepted");
}

#[tokio::test]
async fn the_previous_partner_secret_still_verifies() {
    let app = spawn_app().await;
    let response =
        app.post_webhook_signed(&added_body("1764000000123-bbbbbbbbbbbbbbbbbbbbbbbb"), OLD_PARTNER_SECRET).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn ping_is_answered_pong_and_not_published() {
    let app = spawn_app().await;
    let response = app.post_webhook(br#"{"eventType":"ping","payload":{}}"#).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"status": "pong"}));
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.events_topic), 0);
}

#[tokio::test]
async fn rejected_requests_leave_the_topic_untouched() {
    let app = spawn_app().await;
    let url = format!("{}/webhooks/finicity/connect", app.base_url);
    let good = added_body("1764000000123-cccccccccccccccccccccccc");
    let sig = connectflow::receive::signature::sign(crate::helpers::PARTNER_SECRET, &good);
    let oversized = vec![b' '; 64 * 1024 + 1];
    let oversized_sig = connectflow::receive::signature::sign(crate::helpers::PARTNER_SECRET, &oversized);
    let not_json = b"this is not json".to_vec();
    let not_object = b"[1,2,3]".to_vec();
    let no_type = br#"{"customerId":"1"}"#.to_vec();
    let no_customer = br#"{"eventType":"added","eventId":"1"}"#.to_vec();
    let sign = |b: &[u8]| connectflow::receive::signature::sign(crate::helpers::PARTNER_SECRET, b);
    // (name, body, signature, content type, status, error code)
    type Case<'a> = (&'a str, Vec<u8>, Option<String>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("too large", oversized, Some(oversized_sig), "application/json", 413, "payload_too_large"),
        ("xml", good.clone(), Some(sig.clone()), "application/xml", 415, "unsupported_media_type"),
        ("no signature", good.clone(), None, "application/json", 401, "invalid_signature"),
        ("wrong signature", good.clone(), Some(sign(b"other")), "application/json", 401, "invalid_signature"),
        ("truncated signature", good.clone(), Some(sig[..40].to_owned()), "application/json", 401, "invalid_signature"),
        ("not json", not_json.clone(), Some(sign(&not_json)), "application/json", 400, "invalid_request"),
        ("not an object", not_object.clone(), Some(sign(&not_object)), "application/json", 400, "invalid_request"),
        ("no eventType", no_type.clone(), Some(sign(&no_type)), "application/json", 400, "invalid_request"),
        ("no customerId", no_customer.clone(), Some(sign(&no_customer)), "application/json", 400, "invalid_request"),
    ];
    for (name, body, signature, content_type, status, code) in cases {
        let mut request = app.client.post(&url).header("content-type", content_type).body(body);
        if let Some(signature) = signature {
            request = request.header("X-Finicity-Signature", signature);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status().as_u16(), status, "{name}");
        let answer: Value = response.json().await.expect("JSON error body");
        assert_eq!(answer["error"]["code"], code, "{name}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
    }
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.events_topic), 0);
    // The same app still accepts a good event: the rejections were not
    // because the topic was unreachable.
    let response = app.post_webhook(&good).await;
    assert_eq!(response.status(), 200);
    assert_eq!(count_records(&app.kafka.brokers, &app.kafka.events_topic), 1);
}

#[tokio::test]
async fn xml_is_refused_with_a_message_saying_so() {
    let app = spawn_app().await;
    let body = b"<event/>".to_vec();
    let response = app
        .client
        .post(format!("{}/webhooks/finicity/connect", app.base_url))
        .header("content-type", "application/xml")
        .header("x-finicity-signature", connectflow::receive::signature::sign(crate::helpers::PARTNER_SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 415);
    let answer: Value = response.json().await.expect("json");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("XML")), "{answer}");
}

#[tokio::test]
async fn an_unreachable_broker_means_503_with_retry_after() {
    let mut http = http_settings();
    http.publish_timeout = std::time::Duration::from_millis(500);
    let kafka = unique_kafka_args("127.0.0.1:1");
    let app = spawn_app_with(AppOptions { http, kafka, create_topics: false, consumer: false }).await;
    let response = app.post_webhook(&added_body("1764000000123-dddddddddddddddddddddddd")).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"]["code"], "unavailable");
}

#[tokio::test]
async fn metrics_count_outcomes_and_signature_failures() {
    let app = spawn_app().await;
    app.post_webhook(&added_body("1764000000123-eeeeeeeeeeeeeeeeeeeeeeee")).await;
    app.post_webhook_signed(&added_body("1764000000123-ffffffffffffffffffffffff"), "wrong").await;
    let text = app.get("/metrics").await.text().await.expect("text");
    assert!(text.contains(r#"connectflow_webhooks_total{event_type="added",outcome="accepted"} 1"#), "{text}");
    assert!(text.contains("connectflow_webhook_signature_failures_total 1"), "{text}");
}
