//! Every redb table of the store, in one place. Byte keys are built in
//! [`crate::keys`]; the layout is described in the crate documentation.

use redb::TableDefinition;

/// Store-wide settings and the format version: name -> bytes.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Interned strings (tenant ids, source names): `kind:name` -> number.
pub const NAMES: TableDefinition<&str, u32> = TableDefinition::new("names");
/// The reverse of [`NAMES`]: number -> `kind:name`.
pub const NAMES_BY_NUMBER: TableDefinition<u32, &str> = TableDefinition::new("names_by_number");
/// Store totals (`events_applied`, `refunds`, ...): name -> value.
pub const STATS: TableDefinition<&str, u64> = TableDefinition::new("stats");

/// Primary table: `tenant | home | refund id` -> row (encoded `RefundState`,
/// then the audit sequences of every event received for the refund; see
/// `row.rs`). The home ([`crate::keys::home_of`]) clusters rows by arrival.
pub const REFUNDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refunds");
/// Where each refund's row lives: `tenant | refund id` -> home. Kept in two
/// tiers (see `tiers`): this main one, and [`REFUND_HOMES_RECENT`].
pub const REFUND_HOMES: TableDefinition<&[u8], u32> = TableDefinition::new("refund_homes");
/// The refund homes inserted since the last sweep into [`REFUND_HOMES`].
pub const REFUND_HOMES_RECENT: TableDefinition<&[u8], u32> = TableDefinition::new("refund_homes_recent");

/// Exact counts of refunds: `tenant | dimension | value` -> count.
pub const COUNTS: TableDefinition<&[u8], u64> = TableDefinition::new("counts");

/// Kept summary rows (see [`crate::summary`]): `tenant | family | row |
/// dimension values` -> the row's non-empty time slots, each with its count,
/// refunds with an amount and their u128 sum.
pub const SUMMARIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("summaries");

/// Event identity: `tenant | xxh3-64(event id)` -> audit sequence of the
/// applied event (see `keys::event_slot`). Kept in two tiers (see `tiers`):
/// this main one, and [`EVENT_IDS_RECENT`].
pub const EVENT_IDS: TableDefinition<&[u8; 12], u64> = TableDefinition::new("event_ids");
/// The identity slots claimed since the last sweep into [`EVENT_IDS`].
pub const EVENT_IDS_RECENT: TableDefinition<&[u8; 12], u64> = TableDefinition::new("event_ids_recent");
/// The saved Bloom filters of the [`EVENT_IDS`] and [`REFUND_HOMES`] main
/// tiers: `(table, chunk)` -> 1 MiB of filter blocks, chunk `u32::MAX` the
/// header (see `main_keys`).
pub const MAIN_FILTERS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("main_filters");
/// Event identity for the events whose slot in [`EVENT_IDS`] another event id
/// already holds (a 64-bit hash collision): `tenant | event id` -> sequence.
pub const EVENT_ID_COLLISIONS: TableDefinition<&[u8], u64> = TableDefinition::new("event_id_collisions");
/// Every received valid event, in arrival order: sequence -> audit entry.
pub const AUDIT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_log");
/// Audit entries listed by the refund id they name rather than by a row:
/// `tenant | len | refund id | sequence` -> (). A refund's trail includes
/// them; applying a batch writes none (a conflicting repeat is listed in the
/// row of the refund its event id was first applied to).
pub const AUDIT_ORPHANS: TableDefinition<&[u8], ()> = TableDefinition::new("audit_orphans");

/// Source positions, written in the same transaction as the events they cover.
pub const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// History the store never applied and an operator accepted to go without
/// (records deleted by retention, a recreated topic): `kafka:<topic>:<partition>:<needed, 20 digits>`
/// -> JSON `{topic, partition, needed, available, reason, accepted_at}`. Never removed.
pub const HISTORY_GAPS: TableDefinition<&str, &[u8]> = TableDefinition::new("history_gaps");
/// Every dead letter ever recorded: sequence -> JSON document.
pub const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// The outbox: dead letters not yet delivered to their destination.
pub const DEAD_LETTERS_PENDING: TableDefinition<u64, ()> = TableDefinition::new("dead_letters_pending");

/// Secondary indexes: key layout in `keys::Index`; the value is the refund's home.
/// The windowed ones (`keys::Index::windowed`) are kept in two tiers (see
/// `tiers`): these main tables, and the `_recent` ones below.
pub const BY_CREATED: TableDefinition<&[u8], u32> = TableDefinition::new("by_created");
pub const BY_STATUS: TableDefinition<&[u8], u32> = TableDefinition::new("by_status");
pub const BY_CURRENCY: TableDefinition<&[u8], u32> = TableDefinition::new("by_currency");
pub const BY_PROCESSOR: TableDefinition<&[u8], u32> = TableDefinition::new("by_processor");
pub const BY_PAYMENT_METHOD_TYPE: TableDefinition<&[u8], u32> = TableDefinition::new("by_payment_method_type");
pub const BY_PRODUCT_TYPE: TableDefinition<&[u8], u32> = TableDefinition::new("by_product_type");
pub const BY_ORDER_NO: TableDefinition<&[u8], u32> = TableDefinition::new("by_order_no");
pub const BY_TRANSACTION_ID: TableDefinition<&[u8], u32> = TableDefinition::new("by_transaction_id");
pub const BY_EXTERNAL_REFUND_ID: TableDefinition<&[u8], u32> = TableDefinition::new("by_external_refund_id");
pub const BY_STORE_ID: TableDefinition<&[u8], u32> = TableDefinition::new("by_store_id");
pub const BY_REFERENCE_ID: TableDefinition<&[u8], u32> = TableDefinition::new("by_reference_id");
pub const BY_AMOUNT: TableDefinition<&[u8], u32> = TableDefinition::new("by_amount");
pub const BY_ORDER_NO_RECENT: TableDefinition<&[u8], u32> = TableDefinition::new("by_order_no_recent");
pub const BY_TRANSACTION_ID_RECENT: TableDefinition<&[u8], u32> = TableDefinition::new("by_transaction_id_recent");
pub const BY_EXTERNAL_REFUND_ID_RECENT: TableDefinition<&[u8], u32> =
    TableDefinition::new("by_external_refund_id_recent");
pub const BY_STORE_ID_RECENT: TableDefinition<&[u8], u32> = TableDefinition::new("by_store_id_recent");
pub const BY_REFERENCE_ID_RECENT: TableDefinition<&[u8], u32> = TableDefinition::new("by_reference_id_recent");
pub const BY_AMOUNT_RECENT: TableDefinition<&[u8], u32> = TableDefinition::new("by_amount_recent");
