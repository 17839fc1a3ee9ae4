//! Keyset pages (`starting_after`, `ending_before`, and the cursors of their
//! links) against a brute-force reading of the contract: the page is the
//! matching refunds right beyond the anchor, whether or not the anchor
//! matches the filters, and each link (with its cursor) is non-null exactly
//! when matching refunds lie on that side, in both orderings and for empty
//! pages too. Following a link gives the adjacent page.

mod common;

use common::{App, event};
use proptest::prelude::*;
use serde_json::{Value, json};

const STATUSES: [&str; 5] = ["queued", "processing", "completed", "failed", "cancelled"];
const CURRENCIES: [&str; 2] = ["USD", "EUR"];

/// One generated refund: (tenant, status, currency, created second, amount in hundreds).
type Spec = (usize, usize, usize, i64, u64);

fn arb_refunds() -> impl Strategy<Value = Vec<Spec>> {
    // Few distinct seconds, so that ties on created_at are common.
    proptest::collection::vec((0..2usize, 0..5usize, 0..2usize, 0..6i64, 1..4u64), 1..25)
}

#[derive(Debug, Clone)]
struct Query {
    statuses: Vec<usize>,
    currency: Option<usize>,
    /// `amount_min`, in hundreds (the amount index when nothing else filters).
    amount_min: Option<u64>,
    descending: bool,
    /// `starting_after` (true) or `ending_before`.
    after: bool,
    anchor: usize,
    limit: usize,
}

fn arb_query() -> impl Strategy<Value = Query> {
    (
        proptest::collection::vec(0..5usize, 0..3),
        proptest::option::of(0..2usize),
        proptest::option::of(1..4u64),
        any::<bool>(),
        any::<bool>(),
        any::<proptest::sample::Index>(),
        1..5usize,
    )
        .prop_map(|(statuses, currency, amount_min, descending, after, anchor, limit)| Query {
            statuses,
            currency,
            amount_min,
            descending,
            after,
            anchor: anchor.index(1 << 16),
            limit,
        })
}

/// A refund as the brute force sees it.
#[derive(Debug, Clone)]
struct Known {
    key: (i64, String, String),
    status: usize,
    currency: usize,
    amount: u64,
}

fn fill(app: &App, specs: &[Spec]) -> Vec<Known> {
    let mut events = Vec::new();
    let mut known = Vec::new();
    for (i, &(tenant, status, currency, second, hundreds)) in specs.iter().enumerate() {
        let tenant = format!("org_{tenant}");
        let id = format!("ref_{i:02}");
        let extra = json!({"currency": CURRENCIES[currency], "amount": hundreds * 100});
        events.push(event(&tenant, &id, "refund.queued", second, extra));
        if status > 0 {
            events.push(event(&tenant, &id, &format!("refund.{}", STATUSES[status]), second + 100, json!({})));
        }
        known.push(Known { key: (second, tenant, id), status, currency, amount: hundreds * 100 });
    }
    app.apply(&events);
    known
}

fn ids(page: &Value) -> Vec<String> {
    page["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

/// Checks a keyset page that should hold `matches[start..end]`, and its links.
fn check_page(uri: &str, page: &Value, matches: &[Known], start: usize, end: usize) -> Result<(), TestCaseError> {
    let expected: Vec<String> = matches[start..end].iter().map(|k| k.key.2.clone()).collect();
    prop_assert_eq!(ids(page), expected, "{}: results", uri);
    prop_assert_eq!(page["offset"].clone(), Value::Null, "{}: offset is null in keyset style", uri);
    for (link, cursor, exists) in
        [("previous", "previous_cursor", start > 0), ("next", "next_cursor", end < matches.len())]
    {
        prop_assert_eq!(!page[link].is_null(), exists, "{}: {} (matching refunds on that side: {})", uri, link, exists);
        prop_assert_eq!(!page[cursor].is_null(), exists, "{}: {}", uri, cursor);
        if let Some(url) = page[link].as_str() {
            let cursor = page[cursor].as_str().unwrap();
            prop_assert!(url.contains(&format!("cursor={cursor}")), "{}: the {} link carries {}", uri, link, cursor);
        }
    }
    Ok(())
}

fn query_string(query: &Query, known: &[Known]) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !query.statuses.is_empty() {
        let names: Vec<&str> = query.statuses.iter().map(|&s| STATUSES[s]).collect();
        pairs.push(("status".into(), names.join(",")));
    }
    if let Some(c) = query.currency {
        pairs.push(("currency".into(), CURRENCIES[c].into()));
    }
    if let Some(hundreds) = query.amount_min {
        pairs.push(("amount_min".into(), (hundreds * 100).to_string()));
    }
    pairs.push(("ordering".into(), if query.descending { "-created" } else { "created" }.into()));
    pairs.push(("limit".into(), query.limit.to_string()));
    let anchor = &known[query.anchor % known.len()].key.2;
    pairs.push((if query.after { "starting_after" } else { "ending_before" }.into(), anchor.clone()));
    serde_urlencoded::to_string(&pairs).unwrap()
}

async fn check_query(app: &App, known: &[Known], query: &Query) -> Result<(), TestCaseError> {
    let matches_filter = |k: &Known| {
        (query.statuses.is_empty() || query.statuses.contains(&k.status))
            && query.currency.is_none_or(|c| c == k.currency)
            && query.amount_min.is_none_or(|min| k.amount >= min * 100)
    };
    // The matching refunds in walk order.
    let mut matches: Vec<Known> = known.iter().filter(|k| matches_filter(k)).cloned().collect();
    matches.sort_by(|a, b| a.key.cmp(&b.key));
    if query.descending {
        matches.reverse();
    }
    let anchor = &known[query.anchor % known.len()].key;
    let before_anchor = |k: &Known| if query.descending { k.key > *anchor } else { k.key < *anchor };
    let (start, end) = if query.after {
        // Everything not strictly after the anchor lies before the page.
        let start = matches.iter().filter(|k| before_anchor(k) || k.key == *anchor).count();
        (start, (start + query.limit).min(matches.len()))
    } else {
        let end = matches.iter().filter(|k| before_anchor(k)).count();
        (end.saturating_sub(query.limit), end)
    };
    let uri = format!("/v1/refunds?{}", query_string(query, known));
    let page = app.ok(&uri).await;
    check_page(&uri, &page, &matches, start, end)?;
    let has_more = if query.after { end < matches.len() } else { start > 0 };
    prop_assert_eq!(page["has_more"].as_bool(), Some(has_more), "{}: has_more", uri);
    // The links lead to the adjacent pages, whose own links obey the same rule.
    if let Some(next) = page["next"].as_str() {
        let followed = app.ok(next).await;
        check_page(next, &followed, &matches, end, (end + query.limit).min(matches.len()))?;
    }
    if let Some(previous) = page["previous"].as_str() {
        let followed = app.ok(previous).await;
        check_page(previous, &followed, &matches, start.saturating_sub(query.limit), start)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn keyset_links_are_non_null_exactly_when_matching_refunds_lie_on_that_side(
        specs in arb_refunds(),
        queries in proptest::collection::vec(arb_query(), 1..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let app = App::new();
            let known = fill(&app, &specs);
            for query in &queries {
                check_query(&app, &known, query).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}

/// The cases named in the contract's precise points, spelled out.
#[tokio::test]
async fn an_anchor_outside_the_filters_and_an_empty_page_keep_their_way_back() {
    let app = App::new();
    // Newest first: ref_4 (completed), ref_3 (processing), ref_2 (completed), ref_1 (completed).
    let mut events = Vec::new();
    for (i, status) in [(1, "completed"), (2, "completed"), (3, "processing"), (4, "completed")] {
        let id = format!("ref_{i}");
        events.push(event("org_a", &id, "refund.queued", i, json!({})));
        events.push(event("org_a", &id, &format!("refund.{status}"), i + 100, json!({})));
    }
    app.apply(&events);
    let page = app.ok("/v1/refunds?status=completed&limit=1&starting_after=ref_3").await;
    assert_eq!(ids(&page), ["ref_2"]);
    assert!(page["previous"].is_string(), "ref_4 lies before: {page}");
    assert_eq!(ids(&app.ok(page["previous"].as_str().unwrap()).await), ["ref_4"]);
    let page = app.ok("/v1/refunds?status=completed&limit=1&ending_before=ref_3").await;
    assert_eq!(ids(&page), ["ref_4"]);
    assert!(page["next"].is_string(), "ref_2 lies after: {page}");
    assert_eq!(ids(&app.ok(page["next"].as_str().unwrap()).await), ["ref_2"]);
    // Past the last match: an empty page whose previous link leads back to
    // the last matches, the anchor included.
    let page = app.ok("/v1/refunds?status=completed&limit=2&starting_after=ref_1").await;
    assert_eq!((ids(&page).len(), &page["next"], page["has_more"].as_bool()), (0, &Value::Null, Some(false)));
    assert_eq!(ids(&app.ok(page["previous"].as_str().expect("a way back")).await), ["ref_2", "ref_1"]);
    // Before the first match: the mirror image.
    let page = app.ok("/v1/refunds?status=completed&limit=2&ending_before=ref_4").await;
    assert_eq!((ids(&page).len(), &page["previous"]), (0, &Value::Null));
    assert_eq!(ids(&app.ok(page["next"].as_str().expect("a way on")).await), ["ref_4", "ref_2"]);
}
