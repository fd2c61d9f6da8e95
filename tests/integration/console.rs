//! The operator console in a real headless Chromium, on the real pipeline:
//! sign in, the funnel of simulated flows, a customer's card and timeline,
//! the link to an institution's failing customers, a wrong token and an API
//! that stopped answering.
//!
//! `CONNECTFLOW_CONSOLE_SCREENSHOTS=docs/console` makes the first test save
//! the screenshots the README shows.

use connectflow::event::rfc3339_ms;
use connectflow::lifecycle::AuthReason;
use connectflow::simulate::flows::{API_FLOWS, FLOWS, UNSUPPORTED_INSTITUTION};
use connectflow::simulate::{SimulateArgs, simulate};
use fantoccini::Locator;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::browser::Browser;
use crate::helpers::{API_TOKEN, TestApp, spawn_pipeline};
use crate::simulate::args_for;

/// A customer id from the database: the first (by id) matching `condition`.
pub(crate) async fn customer_where(app: &TestApp, condition: &str) -> String {
    let sql = format!("SELECT customer_id FROM customers WHERE {condition} ORDER BY customer_id LIMIT 1");
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).fetch_one(&app.pool).await.expect("such a customer")
}

/// A customer's recorded event types in timeline order.
async fn event_types(app: &TestApp, customer_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM connect_events WHERE customer_id = $1 ORDER BY occurred_at, event_id")
        .bind(customer_id)
        .fetch_all(&app.pool)
        .await
        .expect("events")
}

pub(crate) async fn sign_in(browser: &Browser, token: &str) {
    browser.type_into("token-input", token).await;
    browser.click("sign-in-submit").await;
}

/// Whether the page fits the window's width (nothing scrolls sideways but
/// inside its own box).
pub(crate) async fn fits_the_width(browser: &Browser) -> bool {
    browser.eval("return document.documentElement.scrollWidth <= window.innerWidth;").await == Value::Bool(true)
}

#[tokio::test]
async fn the_console_shows_the_funnel_a_customer_and_an_institutions_failures() {
    let app = spawn_pipeline().await;
    let flows = FLOWS.iter().chain(API_FLOWS).map(|flow| flow.name.to_owned()).collect();
    let args = SimulateArgs { flow: flows, ..args_for(&app) };
    let outcome = simulate(&args, &CancellationToken::new()).await.expect("the simulation runs");
    outcome.check().unwrap_or_else(|err| panic!("{err}\n{outcome}"));
    let expected = outcome.funnel.clone().expect("customers were simulated");
    let (since, until) = (rfc3339_ms::format(&expected.since), rfc3339_ms::format(&expected.until));
    let browser = Browser::start().await;

    // Signed in from an address naming the funnel of the simulated window.
    browser.goto(&format!("{}/console/#/funnel?since={since}&until={until}&bucket=day", app.base_url)).await;
    browser.wait_for("sign-in").await;
    browser.screenshot("sign-in").await;
    sign_in(&browser, API_TOKEN).await;

    let c = &expected.counts;
    browser.wait_for_text("funnel-customers", &c.customers.to_string()).await;
    // Without a programs file, the one program there is.
    browser.wait_for_text("programs-label", "default").await;
    for (step, n) in [
        ("started", c.steps.started),
        ("institution_chosen", c.steps.institution_chosen),
        ("mfa_challenged", c.steps.mfa_challenged),
        ("authenticated", c.steps.authenticated),
        ("consent_granted", c.steps.consent_granted),
    ] {
        browser.wait_for_text(&format!("funnel-step-{step}"), &n.to_string()).await;
    }
    let failed = &c.failed.by_reason;
    for (testid, n) in [
        ("failed-invalid_credentials", failed.get(AuthReason::InvalidCredentials)),
        ("failed-unable_to_connect", failed.get(AuthReason::UnableToConnect)),
        ("failed-institution_not_found", failed.get(AuthReason::InstitutionNotFound)),
        ("failed-institution_not_supported", failed.get(AuthReason::InstitutionNotSupported)),
        ("failed-total", c.failed.total),
        ("abandoned-cancelled", c.abandoned.by_reason.get(AuthReason::Cancelled)),
        ("abandoned-abandoned", c.abandoned.by_reason.get(AuthReason::Abandoned)),
        ("abandoned-total", c.abandoned.total),
        ("in-progress", c.in_progress),
        ("consent-revoked", c.consent_revoked),
    ] {
        browser.wait_for_text(testid, &n.to_string()).await;
    }
    let conversion = c.conversion.map(|x| format!("{:.1}%", x * 100.0)).expect("customers started");
    browser.wait_for_text("conversion", &conversion).await;
    assert_eq!((c.customers, c.steps.consent_granted, conversion.as_str()), (22, 12, "54.5%"));
    browser.wait_for("funnel-chart").await;
    browser.wait_for("timeseries-chart").await;
    browser.wait_for_count("institution-row", 2).await;
    browser.screenshot("funnel").await;
    let viewport = browser.eval("return [window.innerWidth, window.innerHeight];").await;
    assert_eq!(viewport, serde_json::json!([1280, 800]));
    assert!(fits_the_width(&browser).await, "the funnel fits 1280x800");

    // The unsupported institution's failing customers.
    let link = browser
        .client
        .find(Locator::Css(&format!(
            "[data-testid=institution-row] a[href*='institution_id={UNSUPPORTED_INSTITUTION}']"
        )))
        .await
        .expect("a link to the institution's failing customers");
    link.click().await.expect("following it");
    browser.wait_for_count("customer-row", 2).await;
    for row in browser.texts("customer-row").await {
        assert!(row.contains("failed") && row.contains("institution_not_supported"), "{row}");
    }

    // A customer who went through an MFA challenge and shared two accounts.
    let customer = customer_where(&app, "funnel_steps & 4 <> 0").await;
    browser.click("nav-customer").await;
    browser.type_into("customer-search", &customer).await;
    browser.click("customer-search-submit").await;
    browser.wait_for("lifecycle-card").await;
    browser.wait_for_text("consent-state", "granted").await;
    browser.wait_for_text("auth-state", "authenticated").await;
    browser.wait_for_count("account-row", 2).await;
    for row in browser.texts("account-row").await {
        assert!(row.contains("active"), "{row}");
    }
    let types = event_types(&app, &customer).await;
    assert_eq!(types.len(), 7, "mfa-success: {types:?}");
    browser.wait_for_count("timeline-row", types.len()).await;
    assert_eq!(browser.texts("event-type").await, types, "the timeline in order");
    let timeline = browser.texts("timeline-row").await.join("\n");
    assert!(timeline.contains("mfa_challenge"), "what the mfa event changed: {timeline}");
    browser.screenshot("customer").await;

    // A failed customer: state and reason.
    let failed_customer = customer_where(&app, "auth_reason = 'invalid_credentials'").await;
    browser.goto(&format!("{}/console/#/customer/{failed_customer}", app.base_url)).await;
    browser.wait_for_text("auth-state", "failed").await;
    browser.wait_for_text("auth-reason", "invalid_credentials").await;
    browser.wait_for_text("consent-state", "none").await;

    // An unknown customer: the empty state.
    browser.goto(&format!("{}/console/#/customer/99999999999999", app.base_url)).await;
    browser.wait_for_text_containing("empty", "99999999999999").await;

    // A year of hours: the API keeps the last 2,400, and the page says so.
    let year = "since=2025-01-01T00:00:00.000Z&until=2026-01-01T00:00:00.000Z&bucket=hour";
    browser.goto(&format!("{}/console/#/funnel?{year}", app.base_url)).await;
    browser.wait_for_text_containing("timeseries-truncated", "Only the last 2400 hours").await;

    // A narrow screen: the funnel still fits its width.
    browser.resize(375, 800).await;
    browser.goto(&format!("{}/console/#/funnel?since={since}&until={until}&bucket=day", app.base_url)).await;
    browser.wait_for_text("funnel-customers", "22").await;
    assert!(fits_the_width(&browser).await, "the funnel fits 375 pixels");
    browser.goto(&format!("{}/console/#/customer/{customer}", app.base_url)).await;
    browser.wait_for_count("timeline-row", types.len()).await;
    assert!(fits_the_width(&browser).await, "the customer's card and timeline fit 375 pixels");

    // The token stays in the tab's session: no cookie, not in the address.
    assert_eq!(browser.eval("return document.cookie;").await, Value::String(String::new()));
    let url = browser.client.current_url().await.expect("the address");
    assert!(!url.as_str().contains(API_TOKEN), "{url}");
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_kept_nowhere() {
    let app = spawn_pipeline().await;
    let browser = Browser::start().await;
    browser.goto(&format!("{}/console/", app.base_url)).await;

    sign_in(&browser, "not-the-token").await;

    browser.wait_for_text_containing("error", "Token rejected").await;
    browser.wait_for("sign-in").await;
    let stored = browser.eval("return sessionStorage.length + localStorage.length;").await;
    assert_eq!(stored, Value::from(0), "a rejected token is not kept");
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn an_api_that_stops_answering_shows_the_error() {
    let app = spawn_pipeline().await;
    let browser = Browser::start().await;
    let base_url = app.base_url.clone();
    browser.goto(&format!("{base_url}/console/")).await;
    sign_in(&browser, API_TOKEN).await;
    browser.wait_for("funnel-customers").await;
    assert_eq!(browser.eval("return sessionStorage.length;").await, Value::from(1), "signed in");

    // The service goes away; the page, already loaded, asks for a customer.
    app.stop().await;
    browser.eval("location.hash = '#/customer/1005061234'; return true;").await;
    browser.wait_for_text_containing("error", "unavailable").await;
    browser.close().await;
}
