//! `next`/`previous` links keep the request's own names: filter aliases as
//! sent, `page_size` or `limit`, `page` or `offset`.

mod common;

use common::{App, event};
use serde_json::{Value, json};

/// The query pairs of a link, in order.
fn pairs(link: &Value) -> Vec<(String, String)> {
    let link = link.as_str().unwrap_or_else(|| panic!("a link, not {link}"));
    let query = link.strip_prefix("/v1/refunds?").unwrap_or_else(|| panic!("a list link: {link}"));
    serde_urlencoded::from_str(query).unwrap()
}

fn names(link: &Value) -> Vec<String> {
    pairs(link).into_iter().map(|(name, _)| name).collect()
}

fn value(link: &Value, name: &str) -> Option<String> {
    pairs(link).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn ids(page: &Value) -> Vec<String> {
    page["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

async fn seven_refunds() -> App {
    let app = App::new();
    let events: Vec<Value> =
        (0..7).map(|i| event("org_a", &format!("ref_{i}"), "refund.queued", i, json!({}))).collect();
    app.apply(&events);
    app
}

#[tokio::test]
async fn page_and_page_size_requests_get_page_and_page_size_links() {
    let app = seven_refunds().await;
    // Newest first: ref_6 .. ref_0; page 2 of 3 is ref_3, ref_2, ref_1.
    let page = app.ok("/v1/refunds?state=queued&page=2&page_size=3").await;
    assert_eq!(ids(&page), ["ref_3", "ref_2", "ref_1"]);
    assert_eq!(page["offset"], 3);
    for (link, page_number) in [("next", "3"), ("previous", "1")] {
        assert_eq!(names(&page[link]), ["state", "page_size", "page"], "{link}: {}", page[link]);
        assert_eq!(value(&page[link], "page").as_deref(), Some(page_number), "{link}");
        assert_eq!(value(&page[link], "page_size").as_deref(), Some("3"), "{link}");
    }
    let last = app.ok(page["next"].as_str().unwrap()).await;
    assert_eq!((ids(&last), &last["next"]), (vec!["ref_0".to_owned()], &Value::Null));
    let first = app.ok(page["previous"].as_str().unwrap()).await;
    assert_eq!(
        (ids(&first), &first["previous"]),
        (vec!["ref_6".to_owned(), "ref_5".into(), "ref_4".into()], &Value::Null)
    );

    // Each name as sent: `limit` with `page`, `page_size` with `offset`.
    let page = app.ok("/v1/refunds?limit=3&page=2").await;
    assert_eq!(names(&page["next"]), ["limit", "page"]);
    assert_eq!(value(&page["next"], "page").as_deref(), Some("3"));
    let page = app.ok("/v1/refunds?page_size=3&offset=2").await;
    assert_eq!(names(&page["next"]), ["page_size", "offset"]);
    assert_eq!(value(&page["next"], "offset").as_deref(), Some("5"));
    assert_eq!(value(&page["previous"], "offset").as_deref(), Some("0"));
    // Keyset links keep `page_size` too.
    let page = app.ok("/v1/refunds?page_size=2&starting_after=ref_5").await;
    assert_eq!(names(&page["next"]), ["page_size", "cursor"]);
    assert_eq!(names(&page["previous"]), ["page_size", "cursor"]);
    let cursor = app.ok("/v1/refunds?page_size=2").await["next_cursor"].as_str().unwrap().to_owned();
    let page = app.ok(&format!("/v1/refunds?page_size=2&cursor={cursor}")).await;
    assert_eq!(names(&page["next"]), ["page_size", "cursor"]);
    // Without a page size, links say `limit` with the default.
    let page = app.ok("/v1/refunds?page=1").await;
    assert_eq!(page["next"], Value::Null);
    let page = app.ok("/v1/refunds?offset=1").await;
    assert_eq!(names(&page["previous"]), ["limit", "offset"]);
}
