//! The Grafana dashboard (deploy/kubernetes/base/dashboards/connectflow.json)
//! against a busy pipeline, a `serve` and a `consume` process as deployed,
//! and a real Prometheus scraping both: every metric a panel names is on
//! one of their `/metrics`, and Prometheus evaluates
//! every panel's query (Grafana's `$__rate_interval` given a value), which
//! returns data for the flow's main figures.
//!
//! lint-deploy checks the same queries with `promtool` and the metrics
//! against the registry, without services; this test sees them exported by
//! a service that took webhooks, applied them, published changes and
//! answered the API.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::alerts::Prometheus;
use crate::consumer::{all_applied, send_flow, start_consume_process};
use crate::helpers::{consumer_args, eventually, spawn_app};
use connectflow::metrics::Metrics;

/// The panels' titles and queries, as Prometheus would get them from
/// Grafana over a short range.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/base/dashboards/connectflow.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("json");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").replace("$__rate_interval", "1m");
            queries.push((panel["title"].as_str().expect("title").to_owned(), expr));
        }
    }
    queries
}

/// The metric families a query names (`_total`, `_bucket`, `_count` and
/// `_sum` are samples of a family).
fn families(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("connectflow_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_owned();
        names.insert(family);
    }
    names
}

#[tokio::test]
async fn every_dashboard_query_evaluates_in_prometheus_on_metrics_a_busy_pipeline_exports() {
    let app = spawn_app().await;
    let (ops, token, consumer) =
        start_consume_process(app.pool.clone(), &app.kafka, consumer_args(), Metrics::new()).await;
    let serve = app.base_url.trim_start_matches("http://").parse().expect("address");
    let prometheus = Prometheus::scraping(&[serve, ops], "1s", "1m");
    let scrape = || async {
        let mut text = String::new();
        for url in [format!("{}/metrics", app.base_url), format!("http://{ops}/metrics")] {
            text += &app.client.get(url).send().await.ok()?.text().await.ok()?;
        }
        Some(text)
    };

    // Traffic for every panel: webhooks accepted and refused, events
    // applied, changes published, the API answered.
    let mut expected = Vec::new();
    for (i, flow) in ["legacy-success", "mfa-success", "legacy-success"].into_iter().enumerate() {
        let customer = format!("78200000{i:02}");
        expected.push((customer.clone(), send_flow(&app, &customer, flow, 40 + i as u64).await));
    }
    let refused = app.post_webhook_signed(br#"{"eventType":"ping"}"#, "not-the-partner-secret").await;
    assert_eq!(refused.status(), 401);
    all_applied(&app.pool, &expected, Duration::from_secs(60)).await.expect("applied");
    let lookup = app.api_get(&format!("/v1/customers/{}/lifecycle", expected[0].0)).await;
    assert_eq!(lookup.status(), 200);
    let changes = eventually(Duration::from_secs(30), || async {
        let text = scrape().await?;
        let published: f64 = text
            .lines()
            .filter_map(|line| line.strip_prefix("connectflow_lifecycle_changes_published_total "))
            .filter_map(|value| value.parse::<f64>().ok())
            .sum();
        (published > 0.0).then_some(published)
    })
    .await;
    assert!(changes.is_some(), "the relay published the flows' changes");

    // Every family the panels name is on /metrics (the lag once the
    // consumer's first statistics arrived, every 5 s).
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{} queries", queries.len());
    let named: BTreeSet<String> = queries.iter().flat_map(|(_, expr)| families(expr)).collect();
    let missing = |scraped: &str| -> Vec<String> {
        let exported: BTreeSet<&str> =
            scraped.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        named.iter().filter(|family| !exported.contains(family.as_str())).cloned().collect()
    };
    let all_exported = eventually(Duration::from_secs(30), || async {
        let scraped = scrape().await?;
        missing(&scraped).is_empty().then_some(())
    })
    .await;
    let scraped = scrape().await.expect("metrics");
    assert_eq!(all_exported, Some(()), "not on /metrics: {:?}\n{scraped}", missing(&scraped));

    // Prometheus has scraped the traffic above: each query evaluates, and
    // the flow's main figures have data.
    let scraped_traffic = eventually(Duration::from_secs(30), || async {
        prometheus.query("sum(connectflow_events_applied_total)").await.filter(|applied| *applied > 0.0)
    })
    .await;
    assert!(scraped_traffic.is_some(), "Prometheus scraped the pipeline");
    for (title, expr) in &queries {
        let answer = prometheus.answer(expr).await.expect("Prometheus answers");
        assert_eq!(answer["status"], "success", "panel {title:?}: {expr}: {answer}");
    }
    for expr in [
        "sum(connectflow_webhooks_total{outcome=\"accepted\"})",
        "sum(connectflow_publish_seconds_count)",
        "sum(connectflow_api_request_seconds_count{class=\"2xx\"})",
        "sum(connectflow_lifecycle_change_publish_seconds_count)",
    ] {
        let value = prometheus.query(expr).await;
        assert!(value.is_some_and(|v| v > 0.0), "{expr}: {value:?}");
    }
    assert!(named.len() >= 15, "{named:?}");
    token.cancel();
    consumer.await.expect("join").expect("clean stop");
    app.stop().await;
}
