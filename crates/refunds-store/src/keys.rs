//! Byte encodings of keys. Every encoding here sorts, byte-wise, in the order
//! the store needs; the tests pin both the round trip and the order.

use redb::TableDefinition;
use refunds_domain::{EventType, RefundState, TextField, Timestamp};

use crate::tables;

/// A tenant id, interned as a dense number so that every key starts with a
/// fixed 4-byte prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantNo(pub u32);

impl TenantNo {
    pub fn prefix(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

/// Order-preserving bytes of a timestamp (sign bit flipped, big endian).
pub fn time_bytes(t: Timestamp) -> [u8; 8] {
    ((t.millis() as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn time_from_bytes(bytes: [u8; 8]) -> Option<Timestamp> {
    Timestamp::from_millis((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// `tenant | refund id`: the key of `refund_homes`. The id is last, so it
/// needs no length and sorts as the string does.
pub fn refund_key(tenant: TenantNo, refund_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + refund_id.len());
    key.extend_from_slice(&tenant.prefix());
    key.extend_from_slice(refund_id.as_bytes());
    key
}

/// A refund's home: the arrival epoch of its first applied event (audit
/// sequence / 2^14), fixed for the refund's life. Rows are keyed
/// `tenant | home | refund id`, so a batch's new refunds land together at the
/// end of each tenant's rows instead of at random places among all of them:
/// a write transaction copies a few leaf pages of `refunds` instead of one
/// per refund.
pub fn home_of(seq: u64) -> u32 {
    u32::try_from(seq >> 14).unwrap_or(u32::MAX)
}

/// `tenant | home | refund id`: the key of a refund's row.
pub fn row_key(tenant: TenantNo, home: u32, refund_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + refund_id.len());
    key.extend_from_slice(&tenant.prefix());
    key.extend_from_slice(&home.to_be_bytes());
    key.extend_from_slice(refund_id.as_bytes());
    key
}

/// `tenant | xxh3-64(event id)`: a fixed 12-byte identity slot, so the
/// identity table stays small (more keys per page, fewer pages copied per
/// write transaction). The slot names a candidate only: the applied event's id
/// is read back from the audit log and compared, and the rare other id with
/// the same hash goes to `EVENT_ID_COLLISIONS`, so two events never merge.
pub fn event_slot(tenant: TenantNo, event_id: &str) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&tenant.prefix());
    key[4..].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()).to_be_bytes());
    key
}

/// `tenant | event id`, for hash collisions.
pub fn event_key(tenant: TenantNo, event_id: &str) -> Vec<u8> {
    refund_key(tenant, event_id)
}

/// `tenant | len(id) | refund id | sequence`: a refund's audit entries.
pub fn audit_key(tenant: TenantNo, refund_id: &str, seq: u64) -> Vec<u8> {
    let mut key = audit_prefix(tenant, refund_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn audit_prefix(tenant: TenantNo, refund_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + 1 + refund_id.len() + 8);
    key.extend_from_slice(&tenant.prefix());
    // Refund ids are at most 128 bytes (validated), so one length byte suffices.
    key.push(u8::try_from(refund_id.len()).expect("refund ids are at most 128 bytes"));
    key.extend_from_slice(refund_id.as_bytes());
    key
}

/// One secondary index. Each is keyed `tenant | value | created_at | refund id`
/// so that the refunds with one value, within one tenant, form one contiguous
/// range ordered by (created_at, id): a filtered page in either direction is a
/// range scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Index {
    Created,
    Status,
    Currency,
    Amount,
    Text(TextField),
}

impl Index {
    pub const ALL: [Index; 12] = [
        Index::Created,
        Index::Status,
        Index::Currency,
        Index::Amount,
        Index::Text(TextField::OrderNo),
        Index::Text(TextField::TransactionId),
        Index::Text(TextField::ExternalRefundId),
        Index::Text(TextField::Processor),
        Index::Text(TextField::PaymentMethodType),
        Index::Text(TextField::ProductType),
        Index::Text(TextField::StoreId),
        Index::Text(TextField::ReferenceId),
    ];

    pub fn table(self) -> Option<TableDefinition<'static, &'static [u8], u32>> {
        Some(match self {
            Index::Created => tables::BY_CREATED,
            Index::Status => tables::BY_STATUS,
            Index::Currency => tables::BY_CURRENCY,
            Index::Amount => tables::BY_AMOUNT,
            Index::Text(TextField::OrderNo) => tables::BY_ORDER_NO,
            Index::Text(TextField::TransactionId) => tables::BY_TRANSACTION_ID,
            Index::Text(TextField::ExternalRefundId) => tables::BY_EXTERNAL_REFUND_ID,
            Index::Text(TextField::Processor) => tables::BY_PROCESSOR,
            Index::Text(TextField::PaymentMethodType) => tables::BY_PAYMENT_METHOD_TYPE,
            Index::Text(TextField::ProductType) => tables::BY_PRODUCT_TYPE,
            Index::Text(TextField::StoreId) => tables::BY_STORE_ID,
            Index::Text(TextField::ReferenceId) => tables::BY_REFERENCE_ID,
            Index::Text(TextField::Reason | TextField::FailureReason) => return None,
        })
    }

    /// The recent tier of a windowed index (see `tiers`): new keys go there,
    /// and are swept into [`Index::table`] now and then. `None` for the
    /// other indexes, whose new keys land at few places.
    pub fn recent_table(self) -> Option<TableDefinition<'static, &'static [u8], u32>> {
        Some(match self {
            Index::Amount => tables::BY_AMOUNT_RECENT,
            Index::Text(TextField::OrderNo) => tables::BY_ORDER_NO_RECENT,
            Index::Text(TextField::TransactionId) => tables::BY_TRANSACTION_ID_RECENT,
            Index::Text(TextField::ExternalRefundId) => tables::BY_EXTERNAL_REFUND_ID_RECENT,
            Index::Text(TextField::StoreId) => tables::BY_STORE_ID_RECENT,
            Index::Text(TextField::ReferenceId) => tables::BY_REFERENCE_ID_RECENT,
            _ => return None,
        })
    }

    /// The encoded value component of a refund under this index; `None` when
    /// the refund has no value (it is then absent from the index).
    pub fn value_of(self, state: &RefundState) -> Option<Vec<u8>> {
        let mut value = Vec::new();
        self.write_value(state, &mut value).then_some(value)
    }

    /// Appends [`Index::value_of`] to `out`; `false` (nothing appended) when
    /// the refund has no value.
    fn write_value(self, state: &RefundState, out: &mut Vec<u8>) -> bool {
        match self {
            Index::Created => true,
            Index::Status => {
                write_status_value(state.status, out);
                true
            }
            Index::Currency => state.currency().map(|c| out.extend_from_slice(c.as_bytes())).is_some(),
            Index::Amount => state.amount().map(|a| write_amount_value(a, out)).is_some(),
            Index::Text(field) => state.text(field).map(|t| write_text_value(t, out)).is_some(),
        }
    }

    /// Whether this index is split into created-at windows (see [`window_of`]).
    ///
    /// Indexes whose values are nearly unique (order numbers, ids) or spread
    /// (amounts) would take every new refund at a random place in the tree,
    /// and a write transaction copies every leaf page it touches: measured on
    /// 1M generated events, those six indexes cost 40% of the replay. Keyed
    /// `tenant | window | value | created_at | id`, new refunds land in the
    /// current window's few pages instead. A lookup by value probes each
    /// window that exists (one seek each, about 15 per two years, in each of
    /// the index's two tiers: see `tiers`), and reads each value's refunds
    /// in (created_at, id) order within a window and tier.
    pub fn windowed(self) -> bool {
        matches!(
            self,
            Index::Amount
                | Index::Text(
                    TextField::OrderNo
                        | TextField::TransactionId
                        | TextField::ExternalRefundId
                        | TextField::StoreId
                        | TextField::ReferenceId
                )
        )
    }

    /// How long this index's created windows are, as a power of two of ms.
    ///
    /// Short windows keep a batch's new keys together: a window then holds few
    /// older keys to interleave with, so the sorted inserts of a batch go in as
    /// long runs. But a lookup by value seeks once per window that holds keys.
    /// The amount index is read by ranges that span many windows anyway, so
    /// its windows are 2^28 ms (about 3.1 days); the exact-match text indexes
    /// answer point lookups (order_no, ...), so theirs are 2^30 ms (about 12
    /// days, some 60 seeks per lookup over two years). Measured on 912,612
    /// generated events: text windows of 2^28 made an order_no lookup seek
    /// ~235 times (p99 14.6 ms at 8 connections in bench-api); 2^32 cost the
    /// replay about 10% (88.8k against 98.8k events/s); 2^30 replayed as fast
    /// as 2^28 (99.2k against 98.4k, 4 interleaved runs each).
    pub fn window_bits(self) -> u32 {
        match self {
            Index::Amount => 28,
            _ => 30,
        }
    }

    /// The full index key of a refund, if it has a value.
    pub fn key_of(self, tenant: TenantNo, state: &RefundState) -> Option<Vec<u8>> {
        let mut key = Vec::with_capacity(64);
        self.write_key(tenant, state, &mut key).then_some(key)
    }

    /// Appends the refund's full index key to `out` and says whether it has
    /// one (with no value, nothing is appended). The apply path writes every
    /// key of a batch into one buffer this way rather than allocating each.
    pub fn write_key(self, tenant: TenantNo, state: &RefundState, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let created = state.created_at();
        let window = self.windowed().then(|| window_of(created, self.window_bits()));
        write_key_head(tenant, window, out);
        if !self.write_value(state, out) {
            out.truncate(start);
            return false;
        }
        out.extend_from_slice(&time_bytes(created));
        out.extend_from_slice(state.id.as_bytes());
        true
    }
}

/// A created-at window of 2^`bits` ms; windows sort like the times in them.
pub fn window_of(t: Timestamp, bits: u32) -> u32 {
    // Valid timestamps lie within ±2^48 ms, so the window fits with room.
    u32::try_from((t.millis() >> bits) + (1 << 31)).expect("timestamps are within ±2^48 ms")
}

/// `tenant | window | value`: the keys of one value within one window.
pub fn windowed_prefix(tenant: TenantNo, window: u32, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + 4 + value.len() + 8 + 32);
    write_key_head(tenant, Some(window), &mut key);
    key.extend_from_slice(value);
    key
}

/// `tenant`, then `window` for a windowed index: what every index key holds
/// before its value. The readers' prefixes and [`Index::write_key`] both
/// start here.
fn write_key_head(tenant: TenantNo, window: Option<u32>, out: &mut Vec<u8>) {
    out.extend_from_slice(&tenant.prefix());
    if let Some(window) = window {
        out.extend_from_slice(&window.to_be_bytes());
    }
}

/// The window of a windowed index key (`tenant | window | ...`).
pub fn window_of_key(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(windowed_head(key)?.get(4..)?.try_into().ok()?))
}

/// `tenant | window` of a windowed index key: the keys of one tenant's
/// window share it.
pub(crate) fn windowed_head(key: &[u8]) -> Option<&[u8]> {
    key.get(..8)
}

/// Splits an amount index key (`tenant | window | amount | created_at | id`)
/// into (amount, created_at, refund id).
pub fn split_amount_key(key: &[u8]) -> Option<(u64, Timestamp, &str)> {
    let amount = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    let (created, id) = split_index_key(key, 16)?;
    Some((amount, created, id))
}

/// Status codes follow rank order, so a status value is one byte.
pub fn status_value(status: EventType) -> Vec<u8> {
    let mut out = Vec::with_capacity(1);
    write_status_value(status, &mut out);
    out
}

fn write_status_value(status: EventType, out: &mut Vec<u8>) {
    out.push(status.code());
}

/// Big-endian so that amounts sort numerically.
pub fn amount_value(amount: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    write_amount_value(amount, &mut out);
    out
}

fn write_amount_value(amount: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&amount.to_be_bytes());
}

/// Length-prefixed (2 bytes; values are at most 256 bytes) so that one value
/// is never a prefix of another's range. Exact-match filters need equality,
/// not lexical order, across values.
pub fn text_value(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    write_text_value(text, &mut out);
    out
}

fn write_text_value(text: &str, out: &mut Vec<u8>) {
    let len = u16::try_from(text.len()).expect("text values are at most 256 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// `tenant | value`: every key of one value in one tenant starts with this.
pub fn index_prefix(tenant: TenantNo, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + value.len() + 8 + 32);
    write_key_head(tenant, None, &mut key);
    key.extend_from_slice(value);
    key
}

/// Splits an index key back into (created_at, refund id), given its prefix length.
pub fn split_index_key(key: &[u8], prefix_len: usize) -> Option<(Timestamp, &str)> {
    let time: [u8; 8] = key.get(prefix_len..prefix_len + 8)?.try_into().ok()?;
    let id = std::str::from_utf8(key.get(prefix_len + 8..)?).ok()?;
    Some((time_from_bytes(time)?, id))
}

/// Dimensions with exact counter rows in `COUNTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CountDim {
    All = 0,
    Status = 1,
    Currency = 2,
    Processor = 3,
    PaymentMethodType = 4,
    ProductType = 5,
}

impl CountDim {
    pub const ALL: [CountDim; 6] = [
        CountDim::All,
        CountDim::Status,
        CountDim::Currency,
        CountDim::Processor,
        CountDim::PaymentMethodType,
        CountDim::ProductType,
    ];

    pub fn value_of(self, state: &RefundState) -> Option<Vec<u8>> {
        match self {
            CountDim::All => Some(Vec::new()),
            CountDim::Status => Some(status_value(state.status)),
            CountDim::Currency => state.currency().map(|c| c.as_bytes().to_vec()),
            CountDim::Processor => state.text(TextField::Processor).map(text_value),
            CountDim::PaymentMethodType => state.text(TextField::PaymentMethodType).map(text_value),
            CountDim::ProductType => state.text(TextField::ProductType).map(text_value),
        }
    }
}

/// `tenant | dimension | value`.
pub fn count_key(tenant: TenantNo, dim: CountDim, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + value.len());
    key.extend_from_slice(&tenant.prefix());
    key.push(dim as u8);
    key.extend_from_slice(value);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms).unwrap()
    }

    #[test]
    fn time_bytes_round_trip_and_sort_like_time() {
        let times = [Timestamp::MIN, ts(-86_400_000), ts(-1), ts(0), ts(1), ts(1_700_000_000_000), Timestamp::MAX];
        for pair in times.windows(2) {
            assert!(time_bytes(pair[0]) < time_bytes(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(time_from_bytes(time_bytes(t)), Some(t));
        }
    }

    #[test]
    fn amount_values_sort_numerically() {
        assert!(amount_value(9) < amount_value(10));
        assert!(amount_value(255) < amount_value(256));
        assert!(amount_value(1) < amount_value(u64::MAX));
    }

    #[test]
    fn refund_keys_sort_by_tenant_then_id() {
        let a = refund_key(TenantNo(1), "ref_b");
        let b = refund_key(TenantNo(1), "ref_ba");
        let c = refund_key(TenantNo(2), "ref_a");
        assert!(a < b && b < c);
    }

    #[test]
    fn a_text_value_range_never_contains_a_longer_value() {
        let short = index_prefix(TenantNo(1), &text_value("ab"));
        let long = index_prefix(TenantNo(1), &text_value("abc"));
        assert!(!long.starts_with(&short));
    }

    #[test]
    fn index_keys_order_by_created_then_id_within_a_value() {
        let key = |ms: i64, id: &str| {
            let mut k = index_prefix(TenantNo(7), &text_value("stripe"));
            k.extend_from_slice(&time_bytes(ts(ms)));
            k.extend_from_slice(id.as_bytes());
            k
        };
        let keys = [key(-5, "z"), key(10, "a"), key(10, "b"), key(10, "ba"), key(11, "a")];
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        let prefix_len = 4 + 2 + "stripe".len();
        assert_eq!(split_index_key(&keys[3], prefix_len), Some((ts(10), "ba")));
    }

    #[test]
    fn windows_sort_like_time_and_contain_their_times() {
        for bits in [Index::Amount.window_bits(), Index::Text(TextField::OrderNo).window_bits()] {
            let window_of = |t| window_of(t, bits);
            let width = 1i64 << bits;
            let times = [Timestamp::MIN, ts(-width - 1), ts(-1), ts(0), ts(width - 1), ts(width), Timestamp::MAX];
            for pair in times.windows(2) {
                assert!(window_of(pair[0]) <= window_of(pair[1]));
            }
            assert_eq!(window_of(ts(0)), window_of(ts(width - 1)));
            assert_eq!(window_of(ts(width)), window_of(ts(0)) + 1);
            assert_eq!(window_of(ts(-1)), window_of(ts(0)) - 1);
            assert_eq!(window_of(ts(-width)), window_of(ts(-1)));
            assert!(window_of(Timestamp::MIN) > 0 && window_of(Timestamp::MAX) < u32::MAX);
        }
    }

    #[test]
    fn audit_keys_of_one_refund_share_a_prefix_no_other_refund_has() {
        let a = audit_key(TenantNo(1), "ref_1", 5);
        let b = audit_key(TenantNo(1), "ref_10", 1);
        assert!(a.starts_with(&audit_prefix(TenantNo(1), "ref_1")));
        assert!(!b.starts_with(&audit_prefix(TenantNo(1), "ref_1")));
        assert!(audit_key(TenantNo(1), "ref_1", 5) < audit_key(TenantNo(1), "ref_1", 6));
    }
}
