//! The operator console with programs, in a real headless Chromium: a token
//! of one program sees that program's numbers and nothing of another's; a
//! token of two picks between them; a screen needing a scope the token lacks
//! says which.
//!
//! Two programs (`acme`: customers 7001 and 7002, `bank-b`: 8001 to 8003),
//! seeded as in isolation.rs, and tokens issued with the binary.

use fantoccini::Locator;
use serde_json::Value;

use crate::browser::Browser;
use crate::console::{fits_the_width, sign_in};
use crate::helpers::TestApp;
use crate::isolation::{ACME, BANK_B, seed_flow, seeded};
use crate::tokens::{issue, until_status};

/// Issues a token of `programs` with `scopes`, once the server knows it.
async fn token(app: &TestApp, name: &str, programs: &[&str], scopes: &str) -> String {
    let (token, _) = issue(app, name, programs, scopes).await;
    until_status(app, "/v1/me", &token, 200).await;
    token
}

/// A browser signed in with `token` at `#/funnel`.
async fn signed_in(app: &TestApp, token: &str) -> Browser {
    let browser = Browser::start().await;
    browser.goto(&format!("{}/console/", app.base_url)).await;
    sign_in(&browser, token).await;
    browser
}

/// Goes to a screen of the console (`hash` such as `#/customers`).
async fn open(browser: &Browser, app: &TestApp, hash: &str) {
    browser.goto(&format!("{}/console/{hash}", app.base_url)).await;
}

async fn absent(browser: &Browser, testid: &str) -> bool {
    browser.client.find_all(Locator::Css(&format!("[data-testid={testid}]"))).await.map_or(true, |e| e.is_empty())
}

/// Everything the page shows, as text.
async fn page_text(browser: &Browser) -> String {
    browser.eval("return document.body.innerText;").await.as_str().unwrap_or_default().to_owned()
}

/// Picks `value` ("" for all programs) in the header's program picker.
async fn pick(browser: &Browser, value: &str) {
    let picker = browser.wait_for("program-picker").await;
    let option = picker
        .find(Locator::Css(&format!("option[value='{value}']")))
        .await
        .unwrap_or_else(|err| panic!("no program {value:?} in the picker: {err}"));
    option.click().await.expect("picking a program");
}

/// The funnel's headline figures and step counts, once they show `customers`.
async fn funnel_shows(browser: &Browser, customers: usize, granted: usize, conversion: &str) {
    browser.wait_for_text("funnel-customers", &customers.to_string()).await;
    browser.wait_for_text("funnel-step-started", &customers.to_string()).await;
    browser.wait_for_text("funnel-step-consent_granted", &granted.to_string()).await;
    browser.wait_for_text("conversion", conversion).await;
}

#[tokio::test]
async fn the_console_of_one_programs_token_shows_that_program_only() {
    let app = seeded().await;
    let acme = token(&app, "acme console", &["acme"], "read,stats").await;

    let browser = signed_in(&app, &acme).await;

    // acme's 2 customers, not bank-b's 3 (nor the 5 of both).
    funnel_shows(&browser, ACME.len(), ACME.len(), "100.0%").await;
    browser.wait_for_count("institution-row", 1).await;
    browser.wait_for_text("programs-label", "Acme Card (acme)").await;
    assert!(absent(&browser, "program-picker").await, "one program: no picker");
    let text = page_text(&browser).await;
    assert!(!text.contains("bank-b") && !text.contains("Bank B"), "bank-b offered: {text}");

    // The customer list holds acme's customers; bank-b's is an unknown one.
    open(&browser, &app, "#/customers").await;
    browser.wait_for_count("customer-row", ACME.len()).await;
    let rows = browser.texts("customer-row").await;
    assert!(ACME.iter().all(|id| rows.iter().any(|row| row.starts_with(id))), "{rows:?}");
    let text = page_text(&browser).await;
    assert!(!text.contains("bank-b") && BANK_B.iter().all(|id| !text.contains(id)), "{text}");
    open(&browser, &app, &format!("#/customer/{}", BANK_B[0])).await;
    browser.wait_for_text("empty", &format!("No customer with id {}", BANK_B[0])).await;
    open(&browser, &app, &format!("#/customer/{}", ACME[0])).await;
    browser.wait_for_text("customer-program", "acme").await;
    browser.wait_for_text("consent-state", "granted").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_token_of_two_programs_picks_one_and_keeps_the_choice_in_the_tab() {
    let app = seeded().await;
    let both = token(&app, "both consoles", &["acme", "bank-b"], "read,stats").await;
    let all = ACME.len() + BANK_B.len();

    let browser = signed_in(&app, &both).await;

    funnel_shows(&browser, all, all, "100.0%").await;
    browser.wait_for_text_containing("window-label", "all programs").await;
    let picker = browser.wait_for("program-picker").await;
    let options = picker.find_all(Locator::Css("option")).await.expect("options");
    let mut labels = Vec::new();
    for option in options {
        labels.push(option.text().await.expect("an option's text"));
    }
    assert_eq!(labels, ["All programs", "Acme Card (acme)", "Bank B Rewards (bank-b)"]);

    // bank-b's numbers.
    pick(&browser, "bank-b").await;
    funnel_shows(&browser, BANK_B.len(), BANK_B.len(), "100.0%").await;
    browser.wait_for_text_containing("window-label", "program Bank B Rewards (bank-b)").await;
    browser.screenshot("programs").await;
    let stored = browser
        .eval("return [sessionStorage.getItem('connectflow.program'), localStorage.length, document.cookie];")
        .await;
    assert_eq!(stored, serde_json::json!(["bank-b", 0, ""]), "the choice is kept in the tab's session only");

    // Kept across a reload, for every list too.
    browser.client.refresh().await.expect("reloading");
    funnel_shows(&browser, BANK_B.len(), BANK_B.len(), "100.0%").await;
    let value = browser.eval("return document.querySelector('[data-testid=program-picker]').value;").await;
    assert_eq!(value, Value::from("bank-b"));
    open(&browser, &app, "#/customers").await;
    browser.wait_for_count("customer-row", BANK_B.len()).await;
    for row in browser.texts("customer-row").await {
        assert!(row.contains("bank-b") && BANK_B.iter().any(|id| row.starts_with(id)), "{row}");
    }
    browser.wait_for_text_containing("customers-program", "bank-b").await;
    pick(&browser, "acme").await;
    browser.wait_for_count("customer-row", ACME.len()).await;
    pick(&browser, "").await;
    browser.wait_for_count("customer-row", all).await;
    assert_eq!(browser.eval("return sessionStorage.getItem('connectflow.program');").await, Value::Null);

    // The picker fits a narrow screen.
    browser.resize(375, 800).await;
    open(&browser, &app, "#/funnel").await;
    funnel_shows(&browser, all, all, "100.0%").await;
    browser.wait_for("program-picker").await;
    assert!(fits_the_width(&browser).await, "the funnel and the picker fit 375 pixels");

    // Signing out forgets the choice with the token.
    pick(&browser, "acme").await;
    funnel_shows(&browser, ACME.len(), ACME.len(), "100.0%").await;
    browser.click("sign-out").await;
    browser.wait_for("sign-in").await;
    assert_eq!(browser.eval("return sessionStorage.length;").await, Value::from(0));
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_screen_needing_a_scope_the_token_lacks_says_which() {
    let app = seeded().await;
    // A failed acme customer, so that the institution has failing customers.
    seed_flow(&app, "acme", "invalid-credentials", &["7003"]).await;
    let reader = token(&app, "acme reader console", &["acme"], "read").await;
    let counter = token(&app, "acme stats console", &["acme"], "stats").await;

    // A read-only token signs in: the funnel says what it lacks.
    let browser = signed_in(&app, &reader).await;
    browser.wait_for_text("scope-note", "This token lacks the 'stats' scope: the funnel needs it.").await;
    assert!(absent(&browser, "funnel-customers").await);
    assert!(absent(&browser, "error").await, "a missing scope is no error");
    // And still opens a customer.
    browser.click("nav-customer").await;
    browser.type_into("customer-search", ACME[0]).await;
    browser.click("customer-search-submit").await;
    browser.wait_for_text("customer-program", "acme").await;
    browser.wait_for_text("consent-state", "granted").await;
    browser.wait_for_count("timeline-row", 5).await;

    // A stats-only token: the funnel, but no failing customers' links, and
    // no customer screen.
    browser.click("sign-out").await;
    sign_in(&browser, &counter).await;
    browser.wait_for_text("funnel-customers", "3").await;
    browser.wait_for_text("failed-total", "1").await;
    browser.wait_for_count("institution-row", 1).await;
    browser
        .wait_for_text("scope-note", "This token lacks the 'read' scope: the list of failing customers needs it.")
        .await;
    let links = browser.client.find_all(Locator::Css("[data-testid=institution-row] a")).await.expect("links");
    assert!(links.is_empty(), "no link to a list the token cannot read");
    browser.click("nav-customer").await;
    browser.wait_for_text("scope-note", "This token lacks the 'read' scope: the customer screen needs it.").await;
    open(&browser, &app, "#/customers?authentication=failed").await;
    browser.wait_for_text("scope-note", "This token lacks the 'read' scope: the customer list needs it.").await;

    // A 403 the page did not foresee (the API refusing what /v1/me allowed)
    // shows the API's message as the same note. The API stays consistent
    // with /v1/me, so the refusal is the browser's: its fetch answers 403
    // for the stats routes.
    browser
        .eval(
            "const real = window.fetch;
             window.fetch = (url, init) => String(url).startsWith('/v1/stats/')
               ? Promise.resolve(new Response(
                   JSON.stringify({error: {code: 'forbidden', message: \"this token lacks the 'stats' scope\"}}),
                   {status: 403, headers: {'content-type': 'application/json'}}))
               : real(url, init);
             location.hash = '#/funnel?bucket=hour';
             return true;",
        )
        .await;
    browser.wait_for_text("scope-note", "This token lacks the 'stats' scope.").await;
    assert!(absent(&browser, "error").await);
    browser.close().await;
    app.stop().await;
}
