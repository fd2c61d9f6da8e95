//! Institution health in the operator console, in a real headless Chromium:
//! one institution down and one healthy (sessions recorded as the consumer
//! would, then one beat of the health job), their badges in the funnel's
//! institutions table, the notice on a customer of the down one, and no
//! health at all for a token without `stats`.
//!
//! `CONNECTFLOW_CONSOLE_SCREENSHOTS=docs/console` saves `institutions.png`
//! and `institution-notice.png`.

use std::time::Duration;

use chrono::Utc;
use connectflow::config::HealthArgs;
use connectflow::institution_health::InstitutionHealthJob;
use connectflow::metrics::Metrics;
use fantoccini::Locator;
use serde_json::Value;

use crate::browser::{Browser, WAIT};
use crate::console::{customer_where, fits_the_width, sign_in};
use crate::helpers::{API_TOKEN, TestApp, spawn_app};
use crate::institutions::{Ending, record, sessions};
use crate::tokens::{issue, until_status};

/// 40 sessions, 30 of them failing at the bank: down.
const DOWN: &str = "101732";
/// 30 sessions, all successful: healthy.
const HEALTHY: &str = "202020";

/// The badge (text, tooltip) and the line under it in the institutions
/// table's row of `institution`, once its badge is there.
async fn row_health(browser: &Browser, institution: &str) -> (String, String, String) {
    let row = format!("[data-testid=institution-row][data-institution-id='{institution}']");
    let badge = browser
        .client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!("{row} [data-testid=institution-health]")))
        .await
        .unwrap_or_else(|err| panic!("no health badge in {institution}'s row within {WAIT:?}: {err}"));
    let text = badge.text().await.expect("the badge's text").trim().to_owned();
    let title = badge.attr("title").await.expect("the badge's title").unwrap_or_default();
    let line = browser
        .client
        .find(Locator::Css(&format!("{row} [data-testid=institution-health-line]")))
        .await
        .expect("the line under the badge")
        .text()
        .await
        .expect("its text");
    (text, title, line)
}

/// Whether no element has this `data-testid`.
async fn absent(browser: &Browser, testid: &str) -> bool {
    browser.client.find_all(Locator::Css(&format!("[data-testid={testid}]"))).await.map_or(true, |e| e.is_empty())
}

/// Scrolls the first element with this `data-testid` to the middle of the
/// window (before a screenshot).
async fn scroll_to(browser: &Browser, testid: &str) {
    let script =
        format!("document.querySelector('[data-testid={testid}]').scrollIntoView({{block: 'center'}}); return true;");
    browser.eval(&script).await;
}

/// One institution down and one healthy, evaluated; returns the down one's
/// `since` as the console shows a time of today ("09:12 UTC"; another day's
/// has its date before).
async fn down_and_healthy(app: &TestApp) -> String {
    let now = Utc::now();
    let mut bodies = sessions(7_100_000, 40, 30, Ending::BankDown, DOWN, now);
    bodies.extend(sessions(7_200_000, 30, 0, Ending::Success, HEALTHY, now));
    record(&app.pool, &bodies).await;
    let health = HealthArgs { interval_seconds: 1, ..HealthArgs::default() };
    let job = InstitutionHealthJob::new(&app.kafka, app.pool.clone(), &health, Metrics::new()).expect("job");
    assert!(job.beat(Utc::now()).await.expect("beat").evaluated);

    let down: Value = app.api_get(&format!("/v1/institutions/{DOWN}")).await.json().await.expect("JSON");
    assert_eq!(
        (&down["status"], &down["sessions"], &down["institution_failures"], &down["window_minutes"]),
        (&Value::from("down"), &Value::from(40), &Value::from(30), &Value::from(60)),
        "{down}"
    );
    let healthy: Value = app.api_get(&format!("/v1/institutions/{HEALTHY}")).await.json().await.expect("JSON");
    assert_eq!(healthy["status"], "healthy", "{healthy}");
    let since = down["since"].as_str().expect("since");
    format!("{} UTC", &since[11..16])
}

#[tokio::test]
async fn the_console_shows_each_institutions_health_and_warns_on_a_customer_of_a_down_one() {
    let app = spawn_app().await;
    let since = down_and_healthy(&app).await;
    let failing_customer =
        customer_where(&app, &format!("chosen_institution_id = '{DOWN}' AND auth_reason = 'unable_to_connect'")).await;
    let happy_customer = customer_where(&app, &format!("chosen_institution_id = '{HEALTHY}'")).await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/console/#/funnel", app.base_url)).await;
    sign_in(&browser, API_TOKEN).await;

    // The institutions table: a badge per institution, its sentence as the tooltip.
    browser.wait_for_count("institution-row", 2).await;
    let (text, title, line) = row_health(&browser, DOWN).await;
    assert_eq!(text, "down");
    assert!(
        title.starts_with(&format!("Institution {DOWN} is down since "))
            && title.contains(&format!("{since}: 30 of 40 sessions failed at the bank in the last hour")),
        "{title}"
    );
    assert!(line.contains(&format!("{since} · 30 of 40 failed at the bank")), "{line}");
    let (text, title, line) = row_health(&browser, HEALTHY).await;
    assert_eq!(text, "healthy");
    assert!(title.contains("0 of 30 sessions failed at the bank in the last hour"), "{title}");
    assert!(line.contains("0 of 30 failed at the bank"), "{line}");
    let note_hidden =
        browser.eval("return document.querySelector('[data-testid=institution-health-note]').hidden;").await;
    assert_eq!(note_hidden, Value::Bool(true), "no note: the statuses were answered");
    assert!(fits_the_width(&browser).await, "the funnel with its health column fits 1280x800");
    scroll_to(&browser, "institution-row").await;
    browser.screenshot("institutions").await;

    // A customer whose session failed at the down institution: the notice.
    browser.goto(&format!("{}/console/#/customer/{failing_customer}", app.base_url)).await;
    let notice = browser.wait_for_text_containing("institution-notice", &format!("Institution {DOWN} is down")).await;
    // (A date before the time when the status changed on another day than today.)
    assert!(
        notice.starts_with(&format!("Institution {DOWN} is down since "))
            && notice.ends_with(&format!("{since}: 30 of 40 sessions failed at the bank in the last hour.")),
        "{notice}"
    );
    browser.wait_for_text("customer-institution-health", "down").await;
    browser.wait_for_text("auth-state", "failed").await;
    browser.screenshot("institution-notice").await;

    // A customer of the healthy one: a badge, no notice.
    browser.goto(&format!("{}/console/#/customer/{happy_customer}", app.base_url)).await;
    browser.wait_for_text("customer-institution-health", "healthy").await;
    assert!(absent(&browser, "institution-notice").await, "no notice for a healthy institution");
    // Its shared account's institution has the badge too.
    browser.wait_for_count("account-row", 1).await;
    assert!(browser.texts("account-row").await[0].contains("healthy"));

    // A narrow screen: the table's column and the notice still fit.
    browser.resize(375, 800).await;
    browser.goto(&format!("{}/console/#/funnel", app.base_url)).await;
    assert_eq!(row_health(&browser, DOWN).await.0, "down");
    assert!(fits_the_width(&browser).await, "the funnel with its health column fits 375 pixels");
    browser.goto(&format!("{}/console/#/customer/{failing_customer}", app.base_url)).await;
    browser.wait_for_text_containing("institution-notice", &format!("Institution {DOWN} is down")).await;
    assert!(fits_the_width(&browser).await, "the notice fits 375 pixels");
    browser.resize(1280, 800).await;

    // A token without `stats`: the customer's card, no badge, no notice.
    let (reader, _) = issue(&app, "reader", &[], "read").await;
    until_status(&app, "/v1/me", &reader, 200).await;
    browser.click("sign-out").await;
    browser.goto(&format!("{}/console/#/customer/{failing_customer}", app.base_url)).await;
    sign_in(&browser, &reader).await;
    browser.wait_for_text("auth-state", "failed").await;
    // The timeline comes after the health would have.
    browser.wait_for_count("timeline-row", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(absent(&browser, "institution-notice").await, "no notice without stats");
    assert!(absent(&browser, "customer-institution-health").await, "no badge without stats");
    assert!(absent(&browser, "error").await, "nothing broke");
    browser.close().await;
    app.stop().await;
}
