//! The access log on the real Postgres: written in batches, read in keyset
//! pages by the audit, narrowed to an auditor's programs, pruned by age.

use chrono::{Duration, Utc};
use connectflow::store::access_log::{AccessFilter, AccessRecord, insert, page, prune};

use crate::helpers::{database_args, fresh_database};

fn record(minutes_ago: i64, token: &str, programs: Option<&[&str]>, customer: Option<&str>) -> AccessRecord {
    AccessRecord {
        at: connectflow::event::truncate_to_millis(Utc::now() - Duration::minutes(minutes_ago)),
        token_id: token.to_owned(),
        programs: programs.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
        method: "GET".to_owned(),
        route: "/v1/customers/{customer_id}/lifecycle".to_owned(),
        customer_id: customer.map(str::to_owned),
        status: 200,
        items: Some(1),
    }
}

#[tokio::test]
async fn records_are_paged_filtered_narrowed_to_programs_and_pruned() {
    let pool = connectflow::store::pool(&database_args(&fresh_database().await)).expect("pool");
    connectflow::store::migrate(&pool).await.expect("migrate");
    let records = vec![
        record(50, "tok_a", Some(&["acme"]), Some("1")),
        record(40, "tok_b", Some(&["bank-b"]), Some("2")),
        record(30, "bootstrap-1234", None, Some("1")),
        record(20, "tok_ab", Some(&["acme", "bank-b"]), None),
        record(10, "tok_a", Some(&["acme"]), None),
    ];
    insert(&pool, &records).await.expect("insert");

    // Every record, two at a time, in time order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let (rows, next) = page(&pool, &AccessFilter::default(), after, 2).await.expect("page");
        seen.extend(rows);
        match next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    assert_eq!(seen, records, "every record once, as written, in time order");

    let by = |filter: AccessFilter| {
        let pool = pool.clone();
        async move {
            let (rows, _) = page(&pool, &filter, None, 100).await.expect("page");
            rows.into_iter().map(|r| (r.token_id, r.customer_id)).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(AccessFilter { customer_id: Some("1".into()), ..Default::default() }).await,
        [("tok_a".to_owned(), Some("1".to_owned())), ("bootstrap-1234".to_owned(), Some("1".to_owned()))]
    );
    assert_eq!(by(AccessFilter { token_id: Some("tok_a".into()), ..Default::default() }).await.len(), 2);
    let window = AccessFilter {
        since: Some(Utc::now() - Duration::minutes(45)),
        until: Some(Utc::now() - Duration::minutes(15)),
        ..Default::default()
    };
    assert_eq!(by(window).await.len(), 3);
    // An auditor of acme sees the records within acme alone: not bank-b's,
    // not a record of every program, not one that spans acme and bank-b.
    let acme = AccessFilter { within_programs: Some(vec!["acme".into()]), ..Default::default() };
    assert_eq!(by(acme).await, [("tok_a".to_owned(), Some("1".to_owned())), ("tok_a".to_owned(), None)]);
    let both = AccessFilter { within_programs: Some(vec!["acme".into(), "bank-b".into()]), ..Default::default() };
    assert_eq!(by(both).await.len(), 4);

    let deleted = prune(&pool, Utc::now() - Duration::minutes(35), 1).await.expect("prune");
    assert_eq!(deleted, 2, "the two records older than 35 minutes, one statement at a time");
    assert_eq!(by(AccessFilter::default()).await.len(), 3);
}
