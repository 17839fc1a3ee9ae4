//! What a refund is made of: the catalogs its attributes are drawn from
//! (tenants, currencies, processors, reasons, people and notes) and the
//! draw of one refund's attributes, which its events then carry.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::ndjson::ObjectWriter;
use crate::random::{log_uniform, mix64, pick, push_base62_random, push_base62_u64};

pub(crate) const TENANTS: usize = 40;
/// Zipf exponent: with 40 tenants the biggest holds about 30% of refunds.
pub(crate) const TENANT_ZIPF: f64 = 1.2;

pub(crate) const CURRENCIES: [(&str, u32); 11] = [
    ("USD", 48),
    ("EUR", 18),
    ("GBP", 10),
    ("CAD", 6),
    ("AUD", 5),
    ("JPY", 5),
    ("BRL", 3),
    ("CHF", 2),
    ("SEK", 1),
    ("KWD", 1),
    ("MXN", 1),
];
pub(crate) const PROCESSORS: [(&str, u32); 7] =
    [("stripe", 34), ("adyen", 20), ("paypal", 18), ("braintree", 10), ("checkout", 9), ("worldpay", 7), ("klarna", 2)];
pub(crate) const PAYMENT_METHODS: [(&str, u32); 5] =
    [("credit_card", 45), ("debit_card", 20), ("wallet", 15), ("bank_transfer", 12), ("bnpl", 8)];
pub(crate) const PRODUCT_TYPES: [(&str, u32); 4] =
    [("e_commerce", 55), ("subscription", 20), ("marketplace", 15), ("in_store", 10)];
pub(crate) const REASONS: [(&str, u32); 5] =
    [("requested_by_customer", 50), ("product_defective", 18), ("duplicate", 12), ("fraudulent", 6), ("other", 14)];
pub(crate) const FAILURE_REASONS: [(&str, u32); 7] = [
    ("insufficient_funds", 25),
    ("processor_declined", 25),
    ("expired_or_canceled_card", 15),
    ("account_closed", 12),
    ("lost_or_stolen_card", 8),
    ("charge_disputed", 8),
    ("unknown", 7),
];
pub(crate) const FIRST_NAMES: [&str; 8] = ["ana", "ben", "chloe", "dmitri", "emeka", "fatima", "goran", "hana"];
pub(crate) const LAST_NAMES: [&str; 8] =
    ["silva", "okafor", "nguyen", "muller", "kowalski", "tanaka", "garcia", "smith"];
pub(crate) const EMAIL_DOMAINS: [&str; 4] = ["example.com", "acme.test", "shop.example.org", "corp.test"];
pub(crate) const SYSTEM_ACTORS: [&str; 4] =
    ["sys_auto_refund", "sys_chargeback_sync", "sys_fraud_engine", "sys_subscription_cancel"];
pub(crate) const CHANNELS: [&str; 4] = ["email", "chat", "phone", "web"];
pub(crate) const NOTES: [&str; 6] = [
    "customer returned the item",
    "Kunde hat die Ware zurückgeschickt",
    "colis endommagé à la livraison",
    "返品を受け付けました",
    "customer said \"wrong size\"",
    "partial refund: shipping kept",
];
pub(crate) const RESOLUTIONS: [&str; 4] = ["auto_approved", "agent_approved", "escalated", "closed"];

/// The attributes a refund keeps across its events.
pub(crate) struct Refund {
    pub(crate) id: String,
    pub(crate) tenant: usize,
    pub(crate) currency: &'static str,
    pub(crate) processor: &'static str,
    pub(crate) amount: u64,
    pub(crate) original_amount: u64,
    pub(crate) order_no: String,
    pub(crate) transaction_id: String,
    pub(crate) external_refund_id: String,
    pub(crate) payment_method: &'static str,
    pub(crate) product_type: &'static str,
    pub(crate) store_id: Option<String>,
    pub(crate) reference_id: Option<String>,
    pub(crate) reason: &'static str,
    pub(crate) failure_reason: &'static str,
    pub(crate) initiated_by: Option<String>,
    pub(crate) metadata: Option<String>,
    pub(crate) ticket: u32,
}

/// The attributes of refund `k`, drawn from `rng`: its id (unique, from `k`
/// mixed with `refund_key`), its tenant (from the cumulative `tenant_cdf`),
/// amounts, identifiers, catalog values, initiator and metadata.
pub(crate) fn refund_attributes(rng: &mut ChaCha8Rng, k: u64, refund_key: u64, tenant_cdf: &[f64]) -> Refund {
    let mut id = String::with_capacity(16);
    id.push_str("ref_");
    push_base62_random(&mut id, rng, 1);
    push_base62_u64(&mut id, mix64(k.wrapping_add(refund_key)));

    let roll: f64 = rng.random();
    let tenant = tenant_cdf.partition_point(|&c| c <= roll).min(TENANTS - 1);

    let amount = match rng.random_range(0..100u32) {
        0..3 => rng.random_range(1..100),
        3..90 => log_uniform(rng, 100, 50_000),
        90..99 => log_uniform(rng, 50_000, 2_000_000),
        _ => log_uniform(rng, 2_000_000, 50_000_000),
    };
    let amount = u64::try_from(amount).expect("positive");
    let original_amount = if rng.random_bool(0.45) {
        amount
    } else {
        amount + u64::try_from(log_uniform(rng, 1, 9 * 1_000)).expect("positive") * amount / 1_000
    };

    let mut transaction_id = String::from("ch_");
    push_base62_random(&mut transaction_id, rng, 16);
    let mut external_refund_id = String::from("re_");
    push_base62_random(&mut external_refund_id, rng, 16);

    let product_type = pick(rng, &PRODUCT_TYPES);
    let store_id =
        (product_type == "in_store" || rng.random_bool(0.67)).then(|| format!("store{}", rng.random_range(1..=500u32)));
    let reference_id = rng.random_bool(0.5).then(|| format!("reference_id_{}", rng.random_range(0..1_000_000u32)));

    let initiated_by = rng.random_bool(0.8).then(|| {
        let mut json = String::with_capacity(96);
        let mut obj = ObjectWriter::open(&mut json);
        match rng.random_range(0..100u32) {
            0..55 => {
                obj.str("type", "user");
                let mut id = String::from("usr_");
                push_base62_random(&mut id, rng, 8);
                obj.str("id", &id);
                if rng.random_bool(0.8) {
                    let email = format!(
                        "{}.{}@{}",
                        FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
                        LAST_NAMES[rng.random_range(0..LAST_NAMES.len())],
                        EMAIL_DOMAINS[rng.random_range(0..EMAIL_DOMAINS.len())]
                    );
                    obj.str("email", &email);
                }
            }
            55..80 => {
                obj.str("type", "system");
                obj.str("id", SYSTEM_ACTORS[rng.random_range(0..SYSTEM_ACTORS.len())]);
            }
            _ => {
                obj.str("type", "api");
                let mut id = String::from("key_");
                push_base62_random(&mut id, rng, 10);
                obj.str("id", &id);
                if rng.random_bool(0.2) {
                    obj.str("email", "ops@example.com");
                }
            }
        }
        obj.close();
        json
    });

    let ticket = rng.random_range(1_000..1_000_000u32);
    let metadata = rng.random_bool(0.6).then(|| {
        let mut json = String::with_capacity(128);
        let mut obj = ObjectWriter::open(&mut json);
        obj.str("ticketId", &format!("SUP-{ticket}"));
        if rng.random_bool(0.4) {
            obj.str("channel", CHANNELS[rng.random_range(0..CHANNELS.len())]);
        }
        if rng.random_bool(0.15) {
            obj.str("note", NOTES[rng.random_range(0..NOTES.len())]);
        }
        if rng.random_bool(0.1) {
            obj.raw("tags", r#"["vip","repeat_customer"]"#);
        }
        if rng.random_bool(0.05) {
            obj.raw("source", r#"{"app":"support-dashboard","version":"3.2.1"}"#);
        }
        obj.close();
        json
    });

    Refund {
        id,
        tenant,
        currency: pick(rng, &CURRENCIES),
        processor: pick(rng, &PROCESSORS),
        amount,
        original_amount,
        order_no: format!("ORDER-{}", rng.random_range(10_000..100_000_000u64)),
        transaction_id,
        external_refund_id,
        payment_method: pick(rng, &PAYMENT_METHODS),
        product_type,
        store_id,
        reference_id,
        reason: pick(rng, &REASONS),
        failure_reason: pick(rng, &FAILURE_REASONS),
        initiated_by,
        metadata,
        ticket,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use refunds_domain::{EventType, Timestamp};

    use super::*;
    use crate::testing::clean;

    #[test]
    fn generate_is_varied() {
        let events = &clean().events;
        let mut currencies = HashSet::new();
        let mut processors = HashSet::new();
        let mut raw_currencies = HashSet::new();
        let mut raw_processors = HashSet::new();
        let mut tenants: HashMap<&str, usize> = HashMap::new();
        let mut queued_at: HashMap<Timestamp, usize> = HashMap::new();
        let mut amounts = Vec::new();
        let mut offsets = 0;
        let mut fractions = HashSet::new();
        for (event, value) in events {
            let refund = &value["refund"];
            if let Some(c) = refund["currency"].as_str() {
                raw_currencies.insert(c);
                currencies.insert(c.to_ascii_uppercase());
            }
            if let Some(p) = refund["processor"].as_str() {
                raw_processors.insert(p);
                processors.insert(p.to_lowercase());
            }
            let at = value["occurred_at"].as_str().unwrap().as_bytes();
            if matches!(at[at.len() - 6], b'+' | b'-') {
                offsets += 1;
            }
            fractions.insert(
                at.iter()
                    .position(|&b| b == b'.')
                    .map_or(0, |dot| at[dot + 1..].iter().take_while(|b| b.is_ascii_digit()).count()),
            );
            if event.kind == EventType::Queued {
                *tenants.entry(&event.tenant_id).or_default() += 1;
                *queued_at.entry(event.occurred_at).or_default() += 1;
                amounts.push(event.fields.amount.unwrap());
            }
        }
        assert!(currencies.len() >= 7, "{currencies:?}");
        assert!(processors.len() >= 5, "{processors:?}");
        assert!(raw_currencies.len() > currencies.len(), "some currencies in lower or mixed case");
        assert!(raw_processors.len() > processors.len(), "some processors in mixed case");
        assert!(offsets > 100, "non-Z offsets: {offsets}");
        assert!(fractions.is_superset(&HashSet::from([0, 3, 6])), "{fractions:?}");
        assert!(queued_at.values().any(|&n| n > 1), "equal timestamps across refunds");
        assert_eq!(tenants.len(), TENANTS);
        let queued: usize = tenants.values().sum();
        let biggest = *tenants.values().max().unwrap() as f64 / queued as f64;
        assert!((0.25..=0.37).contains(&biggest), "biggest tenant {biggest}");
        let typical = amounts.iter().filter(|&&a| (100..=50_000).contains(&a)).count() as f64 / amounts.len() as f64;
        assert!((0.8..=0.95).contains(&typical), "{typical}");
        assert!(amounts.iter().any(|&a| a > 1_000_000));
    }
}
