//! API tokens issued, listed and revoked with the binary (`connectflow
//! tokens`) against a running server: scopes give 403 naming the scope,
//! revocations and expiries take effect within 5 s without a restart, and
//! bootstrap tokens (`CONNECTFLOW_API_TOKENS`) keep every scope.

use std::process::Output;
use std::time::{Duration, Instant};

use chrono::Utc;
use connectflow::receive::normalise::{Webhook, normalise};
use connectflow::simulate::flows::{bodies, flow};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{API_TOKEN, TestApp, eventually, spawn_app};

/// A customer seeded in every test's database.
const CUSTOMER: &str = "1005061234";

/// How long issued, revoked and expired tokens may take to take effect.
const PROPAGATION: Duration = Duration::from_secs(5);

/// Runs `connectflow tokens ...` against the app's database.
pub(crate) async fn tokens(app: &TestApp, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
        .arg("tokens")
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .env_remove("CONNECTFLOW_API_TOKENS")
        .output()
        .await
        .expect("the binary runs")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Issues a token; returns it (the one line of stdout) and its id.
pub(crate) async fn issue(app: &TestApp, name: &str, programs: &[&str], scopes: &str) -> (String, String) {
    let mut args = vec!["issue", "--name", name, "--scopes", scopes];
    let joined = programs.join(",");
    if programs.is_empty() {
        args.push("--all-programs");
    } else {
        args.extend(["--programs", joined.as_str()]);
    }
    let output = tokens(app, &args).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the token is the only line on stdout: {stdout:?}");
    assert!(stdout.ends_with('\n'));
    let token = lines[0].to_owned();
    assert!(token.starts_with("cf_") && token.len() == 3 + 64, "{token}");
    let token_id = token_id_of(app, name).await;
    assert!(stderr.contains(&token_id), "stderr names the id: {stderr}");
    (token, token_id)
}

/// The id of the token named `name`, from `tokens list`.
async fn token_id_of(app: &TestApp, name: &str) -> String {
    let output = tokens(app, &["list"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let wanted = format!("name={name}");
    let line = stdout.lines().find(|line| line.split('\t').nth(1) == Some(wanted.as_str()));
    let line = line.unwrap_or_else(|| panic!("{name} listed: {stdout}"));
    line.split('\t').next().expect("the id first").to_owned()
}

async fn seed(app: &TestApp) {
    let start = chrono::DateTime::from_timestamp_millis(1_764_000_000_000).expect("time");
    let events: Vec<_> = bodies(flow("legacy-success").expect("flow"), CUSTOMER, start, 1)
        .iter()
        .map(|body| {
            match normalise(&serde_json::to_vec(body).expect("JSON"), Utc::now(), &Default::default())
                .expect("normalises")
            {
                Webhook::Event(event) => *event,
                Webhook::Ping => panic!("no pings in flows"),
            }
        })
        .collect();
    connectflow::store::apply::apply_batch(&app.pool, &events).await.expect("seeding");
}

/// Calls a `/v1` route with `token`; returns the status and the JSON body.
pub(crate) async fn call(app: &TestApp, method: Method, path: &str, token: &str) -> (u16, Value) {
    let mut request = app.client.request(method.clone(), format!("{}{path}", app.base_url)).bearer_auth(token);
    if method == Method::POST {
        request = request
            .header("idempotency-key", format!("tokens-test-{}", uuid::Uuid::new_v4()))
            .json(&json!({ "revoked_by": "customer" }));
    }
    let response = request.send().await.expect("API request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn status_of(app: &TestApp, path: &str, token: &str) -> u16 {
    call(app, Method::GET, path, token).await.0
}

/// Waits (up to `PROPAGATION` and a second) until `path` answers `status` to
/// `token`; returns how long that took.
pub(crate) async fn until_status(app: &TestApp, path: &str, token: &str, status: u16) -> Duration {
    let started = Instant::now();
    let reached = eventually(PROPAGATION + Duration::from_secs(1), || async {
        (status_of(app, path, token).await == status).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    assert!(reached.is_some(), "{path} did not answer {status} within {elapsed:?}");
    elapsed
}

/// Every `/v1` operation of the served OpenAPI document: method, path with
/// the seeded customer, and the one scope it states.
async fn documented_routes(app: &TestApp) -> Vec<(Method, String, String)> {
    let document: Value = app.get("/v1/openapi.json").await.json().await.expect("the OpenAPI document");
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            let Some(security) = operation.get("security") else { continue };
            // A route that needs a token but no scope (`/v1/me`) is no
            // scope's route.
            let Some(scope) = security[0]["bearer"][0].as_str() else { continue };
            let scope = scope.to_owned();
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            routes.push((method, path.replace("{customer_id}", CUSTOMER), scope));
        }
    }
    assert!(routes.len() >= 8, "{routes:?}");
    routes
}

#[tokio::test]
async fn an_issued_token_works_within_5_s_and_is_stored_only_as_a_digest() {
    let app = spawn_app().await;
    seed(&app).await;
    let started = Instant::now();
    let (token, token_id) = issue(&app, "support desk", &["default"], "read").await;
    assert!(token_id.starts_with("tok_"), "{token_id}");

    let lifecycle = format!("/v1/customers/{CUSTOMER}/lifecycle");
    until_status(&app, &lifecycle, &token, 200).await;
    assert!(started.elapsed() < PROPAGATION, "took {:?}", started.elapsed());
    let (status, body) = call(&app, Method::GET, &lifecycle, &token).await;
    assert_eq!((status, body["customer_id"].as_str()), (200, Some(CUSTOMER)));
    assert_eq!(status_of(&app, "/v1/customers/999999/lifecycle", &token).await, 404);
    assert_eq!(status_of(&app, "/v1/customers", &token).await, 200);

    // Neither `tokens list` nor the table holds the token.
    let listed = tokens(&app, &["list"]).await;
    let listing = text(&listed.stdout);
    assert!(!listing.contains(&token) && !listing.contains(&token[3..]), "{listing}");
    let line = listing.lines().find(|line| line.starts_with(&token_id)).expect("listed");
    assert!(line.contains("\tprograms=default\tscopes=read\t") && line.contains("\texpires=never\t"), "{line}");
    assert!(line.ends_with("\trevoked=no"), "{line}");
    let stored: (Vec<u8>, String) =
        sqlx::query_as("SELECT digest, array_to_string(scopes, ',') FROM api_tokens WHERE token_id = $1")
            .bind(&token_id)
            .fetch_one(&app.pool)
            .await
            .expect("the row");
    assert_eq!(hex::encode(&stored.0), sha256_hex(&token));
    assert!(!listing.contains(&hex::encode(&stored.0)), "{listing}");

    // The use is written back, off the request path, within a refresh or two.
    let used = eventually(PROPAGATION, || async {
        let at: Option<chrono::DateTime<Utc>> =
            sqlx::query_scalar("SELECT last_used_at FROM api_tokens WHERE token_id = $1")
                .bind(&token_id)
                .fetch_one(&app.pool)
                .await
                .expect("the row");
        at
    })
    .await;
    assert!(used.is_some_and(|at| (Utc::now() - at).num_seconds() < 60), "{used:?}");
    let listed = text(&tokens(&app, &["list"]).await.stdout);
    assert!(!listed.contains("last_used=never"), "{listed}");
    app.stop().await;
}

fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[tokio::test]
async fn a_missing_scope_is_403_forbidden_naming_it() {
    let app = spawn_app().await;
    seed(&app).await;
    let (reader, _) = issue(&app, "reader", &[], "read").await;
    let lifecycle = format!("/v1/customers/{CUSTOMER}/lifecycle");
    until_status(&app, &lifecycle, &reader, 200).await;

    let revocation = format!("/v1/customers/{CUSTOMER}/consent/revocations");
    let (status, body) = call(&app, Method::POST, &revocation, &reader).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, json!({"error": {"code": "forbidden", "message": "this token lacks the 'revoke' scope"}}));
    let (status, body) = call(&app, Method::GET, "/v1/stats/funnel", &reader).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, json!({"error": {"code": "forbidden", "message": "this token lacks the 'stats' scope"}}));
    // Nothing was revoked.
    let (_, lifecycle_body) = call(&app, Method::GET, &lifecycle, &reader).await;
    assert_eq!(lifecycle_body["consent"]["state"], "granted");

    // Each documented route refuses a token holding every scope but its
    // own, and accepts (whatever else it answers) one holding only its own.
    let routes = documented_routes(&app).await;
    let mut scopes: Vec<&str> = routes.iter().map(|route| route.2.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    assert_eq!(scopes, ["audit", "erase", "read", "revoke", "stats"]);
    for scope in scopes {
        let others: Vec<&str> =
            ["read", "stats", "revoke", "audit", "erase"].into_iter().filter(|s| *s != scope).collect();
        let (without, _) = issue(&app, &format!("all but {scope}"), &[], &others.join(",")).await;
        let (only, _) = issue(&app, &format!("only {scope}"), &[], scope).await;
        // Both known to the server before the routes are called.
        let probe = if scope == "read" { "/v1/stats/funnel" } else { lifecycle.as_str() };
        until_status(&app, probe, &without, 200).await;
        until_status(&app, &lifecycle, &only, if scope == "read" { 200 } else { 403 }).await;
        for (method, path, needed) in routes.iter().filter(|route| route.2 == scope) {
            let (status, body) = call(&app, method.clone(), path, &without).await;
            assert_eq!(status, 403, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "forbidden");
            assert_eq!(body["error"]["message"], format!("this token lacks the '{needed}' scope"));
            let (status, body) = call(&app, method.clone(), path, &only).await;
            assert!(![401, 403].contains(&status), "{method} {path} with only {scope}: {status} {body}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_gets_401_within_5_s_without_a_restart() {
    let app = spawn_app().await;
    seed(&app).await;
    let (token, token_id) = issue(&app, "to revoke", &["default"], "read,stats").await;
    let lifecycle = format!("/v1/customers/{CUSTOMER}/lifecycle");
    until_status(&app, &lifecycle, &token, 200).await;

    let output = tokens(&app, &["revoke", &token_id]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");
    let took = until_status(&app, &lifecycle, &token, 401).await;
    assert!(took < PROPAGATION, "revocation took {took:?}");
    let (_, body) = call(&app, Method::GET, "/v1/stats/funnel", &token).await;
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(status_of(&app, &lifecycle, API_TOKEN).await, 200, "bootstrap tokens are unaffected");

    // Revoking again changes nothing; an unknown id is an error.
    let again = tokens(&app, &["revoke", &token_id]).await;
    assert!(again.status.success() && text(&again.stderr).contains("already revoked"), "{}", text(&again.stderr));
    let listing = text(&tokens(&app, &["list"]).await.stdout);
    let line = listing.lines().find(|line| line.starts_with(&token_id)).expect("still listed");
    assert!(!line.ends_with("\trevoked=no"), "{line}");
    let unknown = tokens(&app, &["revoke", "tok_0000000000000000"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("tok_0000000000000000"), "{}", text(&unknown.stderr));
    app.stop().await;
}

#[tokio::test]
async fn an_expired_token_gets_401_within_5_s_without_a_restart() {
    let app = spawn_app().await;
    seed(&app).await;
    let output =
        tokens(&app, &["issue", "--name", "expiring", "--all-programs", "--scopes", "read", "--expires-in-days", "1"])
            .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = text(&output.stdout).trim_end().to_owned();
    let token_id = token_id_of(&app, "expiring").await;
    let lifecycle = format!("/v1/customers/{CUSTOMER}/lifecycle");
    until_status(&app, &lifecycle, &token, 200).await;
    let listing = text(&tokens(&app, &["list"]).await.stdout);
    assert!(!listing.contains("expires=never"), "{listing}");

    // Its expiry comes (moved to now, as time would).
    sqlx::query("UPDATE api_tokens SET expires_at = now() WHERE token_id = $1")
        .bind(&token_id)
        .execute(&app.pool)
        .await
        .expect("expiring the token");
    let took = until_status(&app, &lifecycle, &token, 401).await;
    assert!(took < PROPAGATION, "expiry took {took:?}");
    app.stop().await;
}

#[tokio::test]
async fn bootstrap_tokens_keep_every_scope_on_every_route() {
    let app = spawn_app().await;
    seed(&app).await;
    for (method, path, scope) in documented_routes(&app).await {
        let (status, body) = call(&app, method.clone(), &path, API_TOKEN).await;
        assert!(![401, 403].contains(&status), "{method} {path} ({scope}): {status} {body}");
    }
    let (status, _) = call(&app, Method::GET, &format!("/v1/customers/{CUSTOMER}/lifecycle"), "cf_not-issued").await;
    assert_eq!(status, 401);
    app.stop().await;
}

#[tokio::test]
async fn unknown_scopes_and_programs_are_usage_errors() {
    for args in [
        &["issue", "--name", "x", "--all-programs", "--scopes", "read,write"][..],
        &["issue", "--name", "x", "--programs", "Not_A_Program", "--scopes", "read"],
        &["issue", "--name", "x", "--scopes", "read"],
        &["issue", "--name", "x", "--programs", "a", "--all-programs", "--scopes", "read"],
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_connectflow"))
            .arg("tokens")
            .args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
            .output()
            .await
            .expect("the binary runs");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(text(&output.stdout), "", "{args:?}");
        assert!(!stderr.trim().is_empty(), "{args:?}");
    }
}
