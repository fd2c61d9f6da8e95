//! The alert rules (deploy/prometheus/alerts.yaml) in a real Prometheus
//! (Debian's package, started by deploy/observe.sh as `make observe` does),
//! scraping a real `consume` process: the stall alert fires while Postgres
//! does not answer the consumer, and resolves once it does again.
//!
//! Postgres is taken away from the consumer through a TCP proxy
//! (`pg_proxy`), not stopped: the other tests share the server.

use std::time::Duration;

use serde_json::Value;

use crate::consumer::{all_applied, send_flow, start_consume_behind_proxy};
use crate::helpers::{eventually, spawn_app};

/// A Prometheus of deploy/observe.sh with its own port and directory,
/// stopped when dropped.
pub(crate) struct Prometheus {
    url: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    /// Scrapes `target` every `interval` and evaluates the alert rules with
    /// every `for:` shortened to `alert_for`.
    pub(crate) fn start(target: std::net::SocketAddr, interval: &str, alert_for: &str) -> Self {
        Self::scraping(&[target], interval, alert_for)
    }

    /// The same, scraping every one of `targets`.
    pub(crate) fn scraping(targets: &[std::net::SocketAddr], interval: &str, alert_for: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cf-prometheus-{}", uuid::Uuid::new_v4().simple()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let root = env!("CARGO_MANIFEST_DIR");
        let status = std::process::Command::new("bash")
            .arg(format!("{root}/deploy/observe.sh"))
            .arg("up")
            .args(targets.iter().map(ToString::to_string))
            .env("OBSERVE_PORT", port.to_string())
            .env("OBSERVE_DIR", &dir)
            .env("OBSERVE_INTERVAL", interval)
            .env("OBSERVE_FOR", alert_for)
            .status()
            .expect("deploy/observe.sh");
        assert!(status.success(), "deploy/observe.sh up failed");
        Self { url: format!("http://127.0.0.1:{port}"), dir }
    }

    /// The alerts named `name` and their states (`pending`, `firing`).
    async fn alert_states(&self, name: &str) -> Vec<String> {
        let Ok(response) = reqwest::get(format!("{}/api/v1/alerts", self.url)).await else { return Vec::new() };
        let body: Value = response.json().await.unwrap_or_default();
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|alert| alert["labels"]["alertname"] == name)
            .filter_map(|alert| alert["state"].as_str().map(str::to_owned))
            .collect()
    }

    /// The value of an instant query's first sample.
    pub(crate) async fn query(&self, promql: &str) -> Option<f64> {
        let body = self.answer(promql).await?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Prometheus's whole answer to an instant query (`status` is `error`
    /// for a query that does not parse).
    pub(crate) async fn answer(&self, promql: &str) -> Option<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), [("query", promql)]).ok()?;
        reqwest::get(url).await.ok()?.json().await.ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(format!("{}/deploy/observe.sh", env!("CARGO_MANIFEST_DIR")))
            .arg("down")
            .env("OBSERVE_DIR", &self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const STALLED: &str = "ConnectflowConsumerStalled";

#[tokio::test]
async fn a_consumer_stalled_on_postgres_fires_the_stall_alert_in_prometheus_and_it_resolves() {
    let app = spawn_app().await;
    let (proxy, ops, token, handle) = start_consume_behind_proxy(&app, 4).await;
    let prometheus = Prometheus::start(ops, "1s", "3s");

    // Prometheus reads the consumer: its stall time, as configured.
    let scraped = eventually(Duration::from_secs(30), || async {
        prometheus.query("connectflow_consumer_stall_seconds").await.filter(|v| *v == 4.0)
    })
    .await;
    assert_eq!(scraped, Some(4.0), "Prometheus scrapes the consumer's /metrics");
    let first = send_flow(&app, "7810000001", "legacy-success", 31).await;
    all_applied(&app.pool, &[("7810000001".to_owned(), first)], Duration::from_secs(30)).await.expect("applied");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(prometheus.alert_states(STALLED).await.is_empty(), "silent while the consumer applies");

    // Postgres away: the lane holds the next flow past the stall time.
    proxy.set_up(false);
    let second = send_flow(&app, "7810000002", "mfa-success", 32).await;
    let fired = eventually(Duration::from_secs(90), || async {
        prometheus.alert_states(STALLED).await.iter().any(|state| state == "firing").then_some(())
    })
    .await;
    assert_eq!(fired, Some(()), "{STALLED} fires while Postgres does not answer");

    // Postgres back: the flow is applied and the alert resolves.
    proxy.set_up(true);
    all_applied(&app.pool, &[("7810000002".to_owned(), second)], Duration::from_secs(60))
        .await
        .expect("applied after Postgres returns");
    let resolved = eventually(Duration::from_secs(60), || async {
        prometheus.alert_states(STALLED).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(resolved, Some(()), "{STALLED} resolves once the lane applies again");
    token.cancel();
    handle.await.expect("join").expect("clean stop");
}
