//! `GET /v1/refunds`: filters, ordering and the three pagination styles.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use refunds_domain::{EventType, TextField, Timestamp};
use refunds_store::{Direction, Filter, PageRequest, SortKey, Store, TenantNo, count_in, page_in};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::auth::Caller;
use crate::error::{ApiError, store_unavailable};
use crate::params::Params;
use crate::time_param::{Bound, parse_time};

/// Every spelling of every filter parameter of the list, followed by `$extra`:
/// the list's parameters, and the summary's (which takes the same filters).
macro_rules! with_filter_parameters {
    ($($extra:literal),* $(,)?) => {
        &[
            "status",
            "state",
            "currency",
            "currency_code",
            "processor",
            "payment_method_type",
            "product_type",
            "order_no",
            "transaction_id",
            "payment_id",
            "external_refund_id",
            "store_id",
            "reference_id",
            "tenant_id",
            "owner_id",
            "created_after",
            "created_before",
            "created_at_min",
            "created_at_max",
            "from",
            "to",
            "create_time_start",
            "create_time_end",
            "created[gte]",
            "created[lte]",
            "amount_min",
            "amount_max",
            "minimum_amount",
            "maximum_amount",
            $($extra,)*
        ]
    };
}
pub(crate) use with_filter_parameters;

pub const KNOWN: &[&str] = with_filter_parameters!(
    "ordering",
    "order",
    "limit",
    "page_size",
    "offset",
    "page",
    "cursor",
    "starting_after",
    "ending_before",
);

const PAGINATION: &[&str] = &["limit", "page_size", "offset", "page", "cursor", "starting_after", "ending_before"];
const MAX_OFFSET: u64 = 1_000_000;
const STATUSES: &str = "queued, processing, completed, failed, cancelled";

/// Where a page starts.
#[derive(Debug, Clone)]
enum Start {
    Offset(u64),
    /// After this key in the ordering (`cursor` next, `starting_after`);
    /// `inclusive` takes the refund at the key too.
    After {
        key: SortKey,
        inclusive: bool,
    },
    /// Before this key in the ordering (`cursor` previous, `ending_before`).
    Before {
        key: SortKey,
        inclusive: bool,
    },
}

pub struct ListRequest {
    filter: Filter,
    descending: bool,
    limit: usize,
    start: Start,
    tenants: Vec<(String, TenantNo)>,
    /// The request's own non-pagination parameters, for next/previous links.
    link_params: Vec<(String, String)>,
    /// The page size's name as sent (`limit` when none was), for links.
    limit_name: &'static str,
    /// Offsets were asked as `page` numbers: links say `page` too.
    pages: bool,
    fingerprint: String,
}

/// Parses and authorizes a list request against the store's tenants.
pub fn parse(
    store: &Store,
    caller: &Caller,
    params: &Params,
    raw: &[(String, String)],
) -> Result<ListRequest, ApiError> {
    let filter = parse_filter(params)?;
    let descending = match params.aliased("ordering")? {
        None | Some(("ordering", "-created")) | Some(("order", "reverse_chronological")) => true,
        Some(("ordering", "created")) | Some(("order", "chronological")) => false,
        Some((name, _)) => {
            let allowed =
                if name == "order" { "chronological or reverse_chronological" } else { "created or -created" };
            return Err(ApiError::invalid(name, format!("{name} must be {allowed}")));
        }
    };
    let limit_name = if params.get("page_size").is_some() { "page_size" } else { "limit" };
    let limit = match params.aliased("limit")? {
        None => 20,
        Some((name, value)) => match value.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(ApiError::invalid(name, format!("{name} must be between 1 and 100"))),
        },
    };
    let tenants = tenant_scope(store, caller, params)?;
    let fingerprint = fingerprint(&filter, descending, &tenants);

    let keyset: Vec<&str> =
        ["cursor", "starting_after", "ending_before"].into_iter().filter(|n| params.get(n).is_some()).collect();
    let offsets: Vec<&str> = ["offset", "page"].into_iter().filter(|n| params.get(n).is_some()).collect();
    if keyset.len() + usize::from(!offsets.is_empty()) > 1 || offsets.len() > 1 {
        let name = keyset.iter().chain(&offsets).nth(1).copied().unwrap_or("offset");
        return Err(ApiError::invalid(
            name,
            "pagination styles cannot be mixed: give one of offset, page, cursor, starting_after, ending_before",
        ));
    }
    let start = if let Some(value) = params.get("cursor") {
        decode_cursor(store.cursor_key(), value, &fingerprint)?
    } else if let Some(value) = params.get("starting_after") {
        Start::After { key: position_of(store, &tenants, "starting_after", value)?, inclusive: false }
    } else if let Some(value) = params.get("ending_before") {
        Start::Before { key: position_of(store, &tenants, "ending_before", value)?, inclusive: false }
    } else if let Some(value) = params.get("page") {
        let page: u64 = value
            .parse()
            .ok()
            .filter(|&p| p >= 1)
            .ok_or_else(|| ApiError::invalid("page", "page must be an integer >= 1"))?;
        let offset = (page - 1).saturating_mul(limit as u64);
        if offset > MAX_OFFSET {
            return Err(ApiError::invalid("page", format!("page reaches past offset {MAX_OFFSET}")));
        }
        Start::Offset(offset)
    } else {
        let offset = match params.get("offset") {
            None => 0,
            Some(value) => value.parse::<u64>().ok().filter(|&o| o <= MAX_OFFSET).ok_or_else(|| {
                ApiError::invalid("offset", format!("offset must be an integer between 0 and {MAX_OFFSET}"))
            })?,
        };
        Start::Offset(offset)
    };
    let link_params = raw.iter().filter(|(name, _)| !PAGINATION.contains(&name.as_str())).cloned().collect();
    let pages = params.get("page").is_some();
    Ok(ListRequest { filter, descending, limit, start, tenants, link_params, limit_name, pages, fingerprint })
}

/// The filters of a list request (every filter parameter and alias of
/// `GET /v1/refunds`); the summary endpoint takes the same.
pub(crate) fn parse_filter(params: &Params) -> Result<Filter, ApiError> {
    let mut filter = Filter::default();
    if let Some((name, value)) = params.aliased("status")? {
        filter.statuses = list(name, value)?
            .into_iter()
            .map(|s| {
                status(&s).ok_or_else(|| ApiError::invalid(name, format!("{name} must be a comma list of {STATUSES}")))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some((name, value)) = params.aliased("currency")? {
        filter.currencies = list(name, value)?.into_iter().map(|c| c.to_ascii_uppercase()).collect();
    }
    if let Some(value) = params.get("processor") {
        filter.processors = list("processor", value)?.into_iter().map(|p| p.to_lowercase()).collect();
    }
    if let Some(value) = params.get("payment_method_type") {
        filter.payment_method_types = list("payment_method_type", value)?;
    }
    if let Some(value) = params.get("product_type") {
        filter.product_types = list("product_type", value)?;
    }
    for (field, name) in [
        (TextField::OrderNo, "order_no"),
        (TextField::TransactionId, "transaction_id"),
        (TextField::ExternalRefundId, "external_refund_id"),
        (TextField::StoreId, "store_id"),
        (TextField::ReferenceId, "reference_id"),
    ] {
        if let Some((_, value)) = params.aliased(name)? {
            filter.exact.push((field, value.to_owned()));
        }
    }
    if let Some((name, value)) = params.aliased("created_after")? {
        filter.created_min = Some(time(name, value, Bound::Lower)?);
    }
    if let Some((name, value)) = params.aliased("created_before")? {
        filter.created_max = Some(time(name, value, Bound::Upper)?);
    }
    if let Some((name, value)) = params.aliased("amount_min")? {
        filter.amount_min = Some(amount(name, value)?);
    }
    if let Some((name, value)) = params.aliased("amount_max")? {
        filter.amount_max = Some(amount(name, value)?);
    }
    Ok(filter)
}

fn list(name: &str, value: &str) -> Result<Vec<String>, ApiError> {
    let items: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        return Err(ApiError::invalid(name, format!("{name} has an empty item")));
    }
    Ok(items)
}

fn status(value: &str) -> Option<EventType> {
    Some(match value.to_lowercase().as_str() {
        "queued" | "pending" | "refund_queued" => EventType::Queued,
        "processing" => EventType::Processing,
        "completed" | "succeeded" | "successful" | "refunded" => EventType::Completed,
        "failed" => EventType::Failed,
        "cancelled" | "canceled" => EventType::Cancelled,
        _ => return None,
    })
}

fn time(name: &str, value: &str, bound: Bound) -> Result<Timestamp, ApiError> {
    parse_time(value, bound).ok_or_else(|| {
        ApiError::invalid(
            name,
            format!("{name} must be RFC 3339, YYYY-MM-DD, UNIX seconds, DD/MM/YYYY HH:MM or DD/MM/YYYY"),
        )
    })
}

fn amount(name: &str, value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| ApiError::invalid(name, format!("{name} must be a non-negative integer (minor units)")))
}

/// The tenants a caller may list: its own, or for `"*"` keys every tenant
/// or (admin only) the one named by `tenant_id`/`owner_id`.
pub(crate) fn tenant_scope(
    store: &Store,
    caller: &Caller,
    params: &Params,
) -> Result<Vec<(String, TenantNo)>, ApiError> {
    Ok(match caller.requested_tenant(params)? {
        Some(tenant) => store.tenant_no(&tenant).map(|n| vec![(tenant, n)]).unwrap_or_default(),
        None => store.tenants(),
    })
}

/// The sort key of the refund a `starting_after`/`ending_before` names.
fn position_of(store: &Store, tenants: &[(String, TenantNo)], name: &str, id: &str) -> Result<SortKey, ApiError> {
    let mut found = Vec::new();
    for (tenant, _) in tenants {
        if let Some(refund) = store.get_refund(tenant, id).map_err(|e| store_unavailable(&e))? {
            found.push(SortKey::of(&refund));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ApiError::invalid(name, format!("{name} names no refund you can see"))),
        _ => Err(ApiError::invalid(name, format!("{name} names a refund id held by several tenants; give tenant_id"))),
    }
}

/// What a cursor is bound to: the normalized filter, the ordering and the scope.
fn fingerprint(filter: &Filter, descending: bool, tenants: &[(String, TenantNo)]) -> String {
    let filter = filter.deduplicated();
    let scope: Vec<&str> = tenants.iter().map(|(t, _)| t.as_str()).collect();
    let text = format!("{filter:?}|{descending}|{scope:?}");
    hex::encode(&crate::auth::sha256(text.as_bytes())[..16])
}

/// The direction of a cursor: `a`/`b` for after/before its key, `A`/`B`
/// for at or after/before it.
fn encode_cursor(key: &[u8; 32], start: &Start, fingerprint: &str) -> String {
    let (direction, position) = match start {
        Start::After { key, inclusive: false } => ("a", key),
        Start::After { key, inclusive: true } => ("A", key),
        Start::Before { key, inclusive: false } => ("b", key),
        Start::Before { key, inclusive: true } => ("B", key),
        Start::Offset(_) => unreachable!("offsets are not cursors"),
    };
    let body =
        json!([1, direction, position.created_at.millis(), position.tenant_id, position.id, fingerprint]).to_string();
    let body = URL_SAFE_NO_PAD.encode(body);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body.as_bytes());
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn decode_cursor(key: &[u8; 32], cursor: &str, fingerprint: &str) -> Result<Start, ApiError> {
    let invalid = |message: &str| ApiError::InvalidCursor { param: "cursor".into(), message: message.into() };
    let (body, tag) = cursor.split_once('.').ok_or_else(|| invalid("the cursor is malformed"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body.as_bytes());
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid("the cursor is malformed"))?;
    mac.verify_slice(&tag).map_err(|_| invalid("the cursor was altered or comes from another store"))?;
    let fields: Value = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("the cursor is malformed"))?;
    let (Some(direction), Some(ms), Some(tenant_id), Some(id), Some(bound_to)) =
        (fields[1].as_str(), fields[2].as_i64(), fields[3].as_str(), fields[4].as_str(), fields[5].as_str())
    else {
        return Err(invalid("the cursor is malformed"));
    };
    if bound_to != fingerprint {
        return Err(invalid("the cursor belongs to other filters or another ordering"));
    }
    let created_at = Timestamp::from_millis(ms).ok_or_else(|| invalid("the cursor is malformed"))?;
    let key = SortKey { created_at, tenant_id: tenant_id.to_owned(), id: id.to_owned() };
    Ok(match direction {
        "a" => Start::After { key, inclusive: false },
        "A" => Start::After { key, inclusive: true },
        "b" => Start::Before { key, inclusive: false },
        "B" => Start::Before { key, inclusive: true },
        _ => return Err(invalid("the cursor is malformed")),
    })
}

/// Runs the request on one read snapshot and renders the response body.
pub fn execute(store: &Store, txn: &refunds_store::ReadTransaction, request: &ListRequest) -> Result<String, ApiError> {
    let unavailable = |e: refunds_store::StoreError| store_unavailable(&e);
    let tenant_nos: Vec<TenantNo> = request.tenants.iter().map(|(_, n)| *n).collect();
    let count = count_in(txn, &tenant_nos, &request.filter).map_err(unavailable)?;
    let (forward, backward) = match request.descending {
        true => (Direction::Descending, Direction::Ascending),
        false => (Direction::Ascending, Direction::Descending),
    };
    let page = |direction, after: Option<&SortKey>, include_after, skip, take| {
        let request = PageRequest {
            tenants: &request.tenants,
            filter: &request.filter,
            direction,
            after,
            include_after,
            skip,
            take,
        };
        page_in(txn, &request).map_err(unavailable)
    };
    let limit = request.limit;
    // Keyset links: the previous side lies before the page's first refund,
    // the next side after its last one. An empty page has both sides at its
    // anchor: after an empty page after K, every match lies at or before K
    // (so the previous link takes K itself when it matches), and `count`
    // says whether there is any.
    let (results, has_more, offset, previous, next) = match &request.start {
        Start::Offset(offset) => {
            let results = page(forward, None, false, *offset, limit)?;
            let has_more = offset + (results.len() as u64) < count;
            let previous = (*offset > 0).then(|| Start::Offset(offset.saturating_sub(limit as u64)));
            let next = has_more.then(|| Start::Offset(offset + limit as u64));
            (results, has_more, Some(*offset), previous, next)
        }
        Start::After { key, inclusive } => {
            let mut results = page(forward, Some(key), *inclusive, 0, limit + 1)?;
            let has_more = results.len() > limit;
            results.truncate(limit);
            let previous = match results.first() {
                Some(first) => {
                    let first = SortKey::of(first);
                    let exists = !page(backward, Some(&first), false, 0, 1)?.is_empty();
                    exists.then_some(Start::Before { key: first, inclusive: false })
                }
                None => (count > 0).then(|| Start::Before { key: key.clone(), inclusive: !inclusive }),
            };
            let next = results
                .last()
                .filter(|_| has_more)
                .map(|last| Start::After { key: SortKey::of(last), inclusive: false });
            (results, has_more, None, previous, next)
        }
        Start::Before { key, inclusive } => {
            let mut results = page(backward, Some(key), *inclusive, 0, limit + 1)?;
            let has_more = results.len() > limit;
            results.truncate(limit);
            results.reverse();
            let next = match results.last() {
                Some(last) => {
                    let last = SortKey::of(last);
                    let exists = !page(forward, Some(&last), false, 0, 1)?.is_empty();
                    exists.then_some(Start::After { key: last, inclusive: false })
                }
                None => (count > 0).then(|| Start::After { key: key.clone(), inclusive: !inclusive }),
            };
            let previous = results
                .first()
                .filter(|_| has_more)
                .map(|first| Start::Before { key: SortKey::of(first), inclusive: false });
            (results, has_more, None, previous, next)
        }
    };
    let cursor = |start: &Start| match start {
        Start::Offset(_) => None,
        keyed => Some(encode_cursor(store.cursor_key(), keyed, &request.fingerprint)),
    };
    // Any page can start a cursor walk: an offset page's cursors follow its
    // first and last refunds.
    let (next_cursor, previous_cursor) = match offset {
        Some(_) => (
            next.as_ref()
                .and(results.last())
                .and_then(|last| cursor(&Start::After { key: SortKey::of(last), inclusive: false })),
            previous
                .as_ref()
                .and(results.first())
                .and_then(|first| cursor(&Start::Before { key: SortKey::of(first), inclusive: false })),
        ),
        None => (next.as_ref().and_then(cursor), previous.as_ref().and_then(cursor)),
    };
    let link_to = |start: &Start, cursor: Option<&String>| match (start, cursor) {
        (Start::Offset(offset), _) if request.pages => {
            Some(link(request, &[("page", (offset / limit as u64 + 1).to_string())]))
        }
        (Start::Offset(offset), _) => Some(link(request, &[("offset", offset.to_string())])),
        (_, Some(cursor)) => Some(link(request, &[("cursor", cursor.clone())])),
        (_, None) => None,
    };
    let next = next.as_ref().and_then(|start| link_to(start, next_cursor.as_ref()));
    let previous = previous.as_ref().and_then(|start| link_to(start, previous_cursor.as_ref()));
    let envelope = json!({
        "object": "list",
        "count": count,
        "limit": limit,
        "offset": offset,
        "ordering": if request.descending { "-created" } else { "created" },
        "has_more": has_more,
        "next": next,
        "previous": previous,
        "next_cursor": next_cursor,
        "previous_cursor": previous_cursor,
        "results": [],
    });
    // Splice the refunds' one rendering in, rather than parsing it back.
    let mut body = envelope.to_string();
    let tail = "[]}";
    debug_assert!(body.ends_with(tail), "results is the envelope's last key");
    body.truncate(body.len() - tail.len() + 1);
    for (i, refund) in results.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&refunds_domain::render_refund(refund));
    }
    body.push_str("]}");
    Ok(body)
}

fn link(request: &ListRequest, page: &[(&str, String)]) -> String {
    let mut pairs = request.link_params.clone();
    pairs.push((request.limit_name.to_owned(), request.limit.to_string()));
    pairs.extend(page.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    format!("/v1/refunds?{}", serde_urlencoded::to_string(&pairs).expect("pairs of strings encode"))
}
