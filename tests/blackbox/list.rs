//! `GET /v1/refunds` over HTTP against a replayed store.

use serde_json::Value;

use crate::api::{Fixture, Server, fixture};

const ADMIN: Option<&str> = Some("Api-Key secret-ops");

fn tenant_refunds<'a>(f: &'a Fixture, tenant: &str) -> Vec<&'a Value> {
    f.refunds.iter().filter(|r| r["tenant_id"] == tenant).collect()
}

/// Sorted like the API's default ordering: newest first, ties by (tenant_id, id).
fn newest_first(mut refunds: Vec<&Value>) -> Vec<String> {
    refunds.sort_by(|a, b| {
        let key = |r: &Value| {
            (
                r["created_at"].as_str().unwrap().to_owned(),
                r["tenant_id"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            )
        };
        key(b).cmp(&key(a))
    });
    refunds.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

fn ids(body: &Value) -> Vec<String> {
    body["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

fn follow(server: &Server, path: String, auth: Option<&str>, link: &str) -> Vec<String> {
    follow_pages(server, path, auth, link).concat()
}

fn follow_pages(server: &Server, mut path: String, auth: Option<&str>, link: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    for _ in 0..1000 {
        let (status, body, _) = server.get(&path, auth);
        assert_eq!(status, 200, "{path}: {body}");
        pages.push(ids(&body));
        match body[link].as_str() {
            Some(next) => path = next.to_owned(),
            None => return pages,
        }
    }
    panic!("the walk did not end");
}

#[test]
fn a_tenant_lists_exactly_its_refunds_newest_first_with_an_exact_count() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let expected = newest_first(tenant_refunds(&f, &f.tenant_a));
    let (status, body, _) = server.get("/v1/refunds", Some("Api-Key secret-a"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["count"].as_u64().unwrap(), expected.len() as u64);
    assert_eq!((body["limit"].as_u64(), body["offset"].as_u64()), (Some(20), Some(0)));
    assert_eq!(body["ordering"], "-created");
    assert_eq!(ids(&body), expected[..20.min(expected.len())]);
    assert_eq!(body["has_more"], expected.len() > 20);
    assert_eq!(body["previous"], Value::Null);
    // Offset links walk the whole list, and so do cursors.
    assert_eq!(follow(&server, "/v1/refunds?limit=7".into(), Some("Api-Key secret-a"), "next"), expected);
    // Oldest first is the exact reverse, ties on created_at included.
    let mut oldest_first =
        follow(&server, "/v1/refunds?limit=7&ordering=created".into(), Some("Api-Key secret-a"), "next");
    oldest_first.reverse();
    assert_eq!(oldest_first, expected);
    let first = server.get("/v1/refunds?limit=7", Some("Api-Key secret-a")).1;
    let cursor = first["next_cursor"].as_str().unwrap();
    let mut walked = ids(&first);
    walked.extend(follow(&server, format!("/v1/refunds?limit=7&cursor={cursor}"), Some("Api-Key secret-a"), "next"));
    assert_eq!(walked, expected);
    // And backwards from the end with ending_before.
    let last = expected.last().unwrap();
    // Each page is in the list's order; the walk visits pages from the end.
    let mut pages = follow_pages(
        &server,
        format!("/v1/refunds?limit=5&ending_before={last}"),
        Some("Api-Key secret-a"),
        "previous",
    );
    pages.reverse();
    assert_eq!(pages.concat(), expected[..expected.len() - 1]);
    // A tenant key cannot list another tenant.
    let (status, _, _) = server.get(&format!("/v1/refunds?tenant_id={}", f.tenant_b), Some("Api-Key secret-a"));
    assert_eq!(status, 403);
}

#[test]
fn filters_and_their_aliases_select_the_same_refunds_as_the_definition() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let all: Vec<&Value> = f.refunds.iter().collect();
    let count = |query: &str| {
        let (status, body, _) = server.get(&format!("/v1/refunds?{query}"), ADMIN);
        assert_eq!(status, 200, "{query}: {body}");
        body["count"].as_u64().unwrap()
    };
    let completed = all.iter().filter(|r| r["status"] == "completed").count() as u64;
    for query in ["status=completed", "state=refunded", "status=SUCCEEDED", "status=successful"] {
        assert_eq!(count(query), completed, "{query}");
    }
    let failed_or_cancelled =
        all.iter().filter(|r| r["status"] == "failed" || r["status"] == "cancelled").count() as u64;
    assert_eq!(count("status=failed,canceled"), failed_or_cancelled);
    let usd = all.iter().filter(|r| r["currency"] == "USD").count() as u64;
    assert_eq!(count("currency=usd"), usd);
    assert_eq!(count("currency_code=USD"), usd);
    let in_range = |r: &&&Value| r["amount"].as_u64().is_some_and(|a| (1000..=5000).contains(&a));
    assert_eq!(count("amount_min=1000&amount_max=5000"), all.iter().filter(in_range).count() as u64);
    assert_eq!(count("minimum_amount=1000&maximum_amount=5000"), all.iter().filter(in_range).count() as u64);
    assert_eq!(count("amount_min=5000&amount_max=1000"), 0, "an inverted range is empty, not an error");
    let order_no = all.iter().find_map(|r| r["order_no"].as_str()).unwrap();
    let with_order = all.iter().filter(|r| r["order_no"] == order_no).count() as u64;
    assert_eq!(count(&format!("order_no={order_no}")), with_order);
    let tx = all.iter().find_map(|r| r["transaction_id"].as_str()).unwrap();
    assert_eq!(count(&format!("payment_id={tx}")), count(&format!("transaction_id={tx}")));
    assert!(count(&format!("payment_id={tx}")) >= 1);
    // Time bounds: a day given as YYYY-MM-DD covers the whole day.
    let day = &all[0]["created_at"].as_str().unwrap()[..10];
    let on_day = all.iter().filter(|r| r["created_at"].as_str().unwrap().starts_with(day)).count() as u64;
    assert_eq!(count(&format!("created_after={day}&created_before={day}")), on_day);
    let (y, m, d) = (&day[..4], &day[5..7], &day[8..10]);
    assert_eq!(count(&format!("from={d}/{m}/{y}&to={d}/{m}/{y}")), on_day);
    assert_eq!(
        count(&format!("from={d}/{m}/{y}%2000:00&to={d}/{m}/{y}%2023:59")),
        on_day,
        "DD/MM/YYYY HH:MM covers its minute"
    );
    assert_eq!(count(&format!("created[gte]={day}T00:00:00Z&created[lte]={day}T23:59:59Z")), on_day);
    assert_eq!(count(&format!("tenant_id={}", f.tenant_a)), tenant_refunds(&f, &f.tenant_a).len() as u64);
}

#[test]
fn the_seed_clients_query_strings_work_unchanged() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    for query in [
        "state=refunded&currency_code=KWD&limit=10&offset=0&ordering=-created",
        "created_at_min=1711929600&created_at_max=2024-04-30T23:59:59Z",
        "order=chronological&from=2025-01-01T00:00:00Z&to=2025-01-31T23:59:59Z",
        "page=2&page_size=50&minimum_amount=100&maximum_amount=5000",
    ] {
        let (status, body, _) = server.get(&format!("/v1/refunds?{query}"), ADMIN);
        assert_eq!(status, 200, "{query}: {body}");
    }
    let (_, body, _) = server.get("/v1/refunds?order=chronological&limit=3", ADMIN);
    assert_eq!(body["ordering"], "created", "the ordering is canonical whatever alias was used");
    let (_, body, _) = server.get("/v1/refunds?page=2&page_size=50", ADMIN);
    assert_eq!(body["offset"], 50);
    // Links keep the request's names: page and page_size, not offset and limit.
    for (link, page) in [("next", "page=3"), ("previous", "page=1")] {
        let url = body[link].as_str().unwrap();
        assert!(url.contains(page) && url.contains("page_size=50") && !url.contains("offset="), "{link}: {url}");
    }
}

#[test]
fn bad_list_requests_are_400_naming_the_parameter() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    let error = |query: &str| {
        let (status, body, _) = server.get(&format!("/v1/refunds?{query}"), ADMIN);
        assert_eq!(status, 400, "{query}: {body}");
        (
            body["error"]["code"].as_str().unwrap().to_owned(),
            body["error"]["param"].as_str().unwrap_or("").to_owned(),
            body["error"]["message"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(error("limit=0").1, "limit");
    assert_eq!(error("limit=101").1, "limit");
    assert_eq!(error("page_size=abc").1, "page_size");
    let (code, param, message) = error("status=done");
    assert_eq!((code.as_str(), param.as_str()), ("invalid_parameter", "status"));
    assert!(message.contains("completed") && message.contains("cancelled"), "{message}");
    assert_eq!(error("status=").1, "status");
    assert_eq!(error("Limit=5").0, "unknown_parameter");
    assert_eq!(error("limit=5&page_size=5").0, "invalid_parameter");
    assert_eq!(error("offset=5&page=2").0, "invalid_parameter");
    assert_eq!(error("offset=-1").1, "offset");
    assert_eq!(error("offset=1000001").1, "offset");
    assert_eq!(error("created_after=yesterday").1, "created_after");
    assert_eq!(error("amount_min=-5").1, "amount_min");
    assert_eq!(error("ordering=amount").1, "ordering");
    let id = f.refunds[0]["id"].as_str().unwrap();
    assert_eq!(error(&format!("starting_after={id}&ending_before={id}")).0, "invalid_parameter");
    assert_eq!(error("starting_after=ref_nope").1, "starting_after");
    let cursor = server.get("/v1/refunds?limit=2", ADMIN).1["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(error(&format!("cursor={cursor}&offset=2")).0, "invalid_parameter");
    assert_eq!(
        error(&format!("cursor={cursor}&status=completed")).0,
        "invalid_cursor",
        "a cursor is bound to its filters"
    );
    assert_eq!(error(&format!("cursor={cursor}&ordering=created")).0, "invalid_cursor");
    let mut altered = cursor.clone().into_bytes();
    altered[3] = if altered[3] == b'A' { b'B' } else { b'A' };
    assert_eq!(error(&format!("cursor={}", String::from_utf8(altered).unwrap())).0, "invalid_cursor");
    // Another limit with the same cursor is fine.
    assert_eq!(server.get(&format!("/v1/refunds?cursor={cursor}&limit=3"), ADMIN).0, 200);
}

#[test]
fn an_offset_page_is_the_same_slice_of_the_whole_ordering_either_way_for_one_tenant_or_all() {
    let f = fixture();
    let server = Server::start(&f.db, &f.keys);
    // One tenant's key (one index range: the offset is skipped on the range)
    // and the admin key over every tenant (several ranges, merged).
    for (auth, refunds) in
        [(Some("Api-Key secret-a"), tenant_refunds(&f, &f.tenant_a)), (ADMIN, f.refunds.iter().collect())]
    {
        let newest = newest_first(refunds);
        let oldest: Vec<String> = newest.iter().rev().cloned().collect();
        for (ordering, expected) in [("-created", &newest), ("created", &oldest)] {
            let n = expected.len();
            for offset in [0, 1, 7, n / 2, n - 1, n, n + 3] {
                let path = format!("/v1/refunds?ordering={ordering}&limit=5&offset={offset}");
                let (status, body, _) = server.get(&path, auth);
                assert_eq!(status, 200, "{path}: {body}");
                assert_eq!(ids(&body), expected[offset.min(n)..(offset + 5).min(n)], "{path}");
                assert_eq!(body["count"].as_u64().unwrap(), n as u64, "{path}");
            }
        }
    }
}
