//! Reads: single refunds, export, audit trails, totals, checkpoints and the
//! dead-letter outbox. Each call reads one committed snapshot.

use std::io::{self, Write};
use std::sync::Arc;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use refunds_domain::{InvalidEvent, RefundState, Timestamp, render_refund};
use serde_json::json;

use crate::audit::{AuditEntry, StoredSource, decode_entry};
use crate::batch::{Checkpoint, Item, SourcePos};
use crate::keys::{self, TenantNo};
use crate::{Store, StoreError, row, tables};

pub(crate) mod stat_names {
    pub const EVENTS_APPLIED: &str = "events_applied";
    pub const EVENTS_DUPLICATE: &str = "events_duplicate";
    pub const EVENTS_CONFLICTING_DUPLICATE: &str = "events_conflicting_duplicate";
    pub const EVENTS_INVALID: &str = "events_invalid";
    pub const REFUNDS: &str = "refunds";
    pub const LAST_APPLIED_AT: &str = "last_applied_at";
}

/// The store's totals, as `/v1/status` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub events_applied: u64,
    pub events_duplicate: u64,
    pub events_conflicting_duplicate: u64,
    pub events_invalid: u64,
    pub dead_letters_pending: u64,
    pub refunds: u64,
    /// Arrival time of the newest applied event.
    pub last_applied_at: Option<Timestamp>,
}

/// One recorded dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub sequence: u64,
    /// `{"reason", "message", "raw", "source", "received_at"}`.
    pub document: serde_json::Value,
}

pub(crate) fn dead_letter_document(invalid: &InvalidEvent, item: &Item) -> Vec<u8> {
    let mut doc = json!({
        "reason": invalid.reason.as_str(),
        "message": invalid.message,
        "raw": String::from_utf8_lossy(&item.raw),
        "source": source_json(&item.source),
        "received_at": item.received_at.to_string(),
    });
    if let Some(key) = &item.key {
        doc["key"] = json!(String::from_utf8_lossy(key));
    }
    serde_json::to_vec(&doc).expect("a JSON value always serializes")
}

pub fn source_json(source: &SourcePos) -> serde_json::Value {
    match source {
        SourcePos::File { path, line } => json!({"file": path.as_ref(), "line": line}),
        SourcePos::Kafka { topic, partition, offset } => {
            json!({"topic": topic.as_ref(), "partition": partition, "offset": offset})
        }
    }
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

impl Store {
    pub fn read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    /// One refund of one tenant.
    pub fn get_refund(&self, tenant_id: &str, refund_id: &str) -> Result<Option<RefundState>, StoreError> {
        self.get_refund_in(&self.read()?, tenant_id, refund_id)
    }

    /// [`Store::get_refund`] in the snapshot `txn`.
    pub fn get_refund_in(
        &self,
        txn: &ReadTransaction,
        tenant_id: &str,
        refund_id: &str,
    ) -> Result<Option<RefundState>, StoreError> {
        let Some(tenant) = self.tenant_no(tenant_id) else {
            return Ok(None);
        };
        get_refund_in(txn, tenant, refund_id)
    }

    /// Writes every refund, rendered as the API does, one per line, ordered
    /// by (tenant_id, id). Returns the number of refunds written.
    pub fn export(&self, out: &mut impl Write) -> Result<u64, ExportError> {
        let txn = self.read()?;
        self.export_in(&txn, out)
    }

    /// The export preceded by one line `{"checkpoints": {source: position},
    /// "history_gaps": [...]}`, both from one snapshot: what the projection
    /// holds, exactly which source positions it covers (`verify` rebuilds up
    /// to them) and which history it accepted to go without.
    pub fn export_with_checkpoints(&self, out: &mut impl Write) -> Result<u64, ExportError> {
        let txn = self.read()?;
        let table = txn.open_table(tables::CHECKPOINTS).map_err(StoreError::from)?;
        let mut checkpoints = serde_json::Map::new();
        for row in table.iter().map_err(StoreError::from)? {
            let (name, value) = row.map_err(StoreError::from)?;
            let checkpoint = Checkpoint::decode(value.value()).ok_or_else(|| corrupt("checkpoint"))?;
            checkpoints.insert(name.value().to_owned(), json!(checkpoint.position));
        }
        let gaps: Vec<serde_json::Value> =
            crate::gaps::history_gaps_in(&txn)?.iter().map(crate::AcceptedGap::to_json).collect();
        serde_json::to_writer(&mut *out, &json!({"checkpoints": checkpoints, "history_gaps": gaps}))
            .map_err(io::Error::from)?;
        out.write_all(b"\n")?;
        self.export_in(&txn, out)
    }

    fn export_in(&self, txn: &ReadTransaction, out: &mut impl Write) -> Result<u64, ExportError> {
        let refunds = txn.open_table(tables::REFUNDS).map_err(StoreError::from)?;
        let homes = crate::tiers::HOMES.open_read(txn).map_err(StoreError::from)?;
        // The tenants of this snapshot (the shared cache may lag a commit).
        let mut tenants = tenants_in(txn)?;
        tenants.sort();
        let mut written = 0;
        for (_, tenant) in tenants {
            let start = tenant.prefix();
            let end = TenantNo(tenant.0 + 1).prefix();
            // The homes are in (tenant, id) order; rows are in arrival order.
            for entry in homes.range(start.as_slice()..end.as_slice()).map_err(StoreError::from)? {
                let (key, home) = entry.map_err(StoreError::from)?;
                let refund_id = std::str::from_utf8(&key.value()[4..]).map_err(|_| corrupt("refund home key"))?;
                let row = refunds
                    .get(keys::row_key(tenant, home.value(), refund_id).as_slice())
                    .map_err(StoreError::from)?
                    .ok_or_else(|| corrupt(format!("refund {refund_id} has a home but no row")))?;
                let state = decode_row_state(row.value())?;
                out.write_all(render_refund(&state).as_bytes())?;
                out.write_all(b"\n")?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// A refund's audit trail ordered by (occurred_at, event_id), then arrival.
    pub fn audit_trail(&self, tenant_id: &str, refund_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_trail_in(&self.read()?, tenant_id, refund_id)
    }

    /// [`Store::audit_trail`] in the snapshot `txn`.
    pub fn audit_trail_in(
        &self,
        txn: &ReadTransaction,
        tenant_id: &str,
        refund_id: &str,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let Some(tenant) = self.tenant_no(tenant_id) else {
            return Ok(Vec::new());
        };
        let orphans = txn.open_table(tables::AUDIT_ORPHANS)?;
        let log = txn.open_table(tables::AUDIT_LOG)?;
        let mut sequences = match row_in(txn, tenant, refund_id)? {
            Some(row) => {
                let (_, seqs) = row::split(&row).ok_or_else(|| corrupt(format!("row of {refund_id}")))?;
                row::seqs(seqs).ok_or_else(|| corrupt(format!("row of {refund_id}")))?
            }
            None => Vec::new(),
        };
        let prefix = keys::audit_prefix(tenant, refund_id);
        for entry in orphans.range(prefix.as_slice()..)? {
            let (key, _) = entry?;
            let key = key.value();
            if !key.starts_with(&prefix) {
                break;
            }
            let seq_bytes: [u8; 8] = key[prefix.len()..].try_into().map_err(|_| corrupt("audit key"))?;
            sequences.push(u64::from_be_bytes(seq_bytes));
        }
        let mut entries = Vec::with_capacity(sequences.len());
        for seq in sequences {
            let raw = log.get(seq)?.ok_or_else(|| corrupt(format!("audit entry {seq} is missing")))?;
            let entry = decode_entry(raw.value()).ok_or_else(|| corrupt(format!("audit entry {seq}")))?;
            let payload = entry.payload_json(seq)?;
            let text = |key: &str| payload.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let occurred_at = Timestamp::parse_rfc3339(&text("occurred_at"))
                .ok_or_else(|| corrupt(format!("audit payload {seq} occurred_at")))?;
            entries.push(AuditEntry {
                sequence: seq,
                event_id: text("event_id"),
                event_type: text("type"),
                occurred_at,
                received_at: entry.received_at,
                outcome: entry.outcome,
                source: self.source_pos(entry.source)?,
                payload,
            });
        }
        entries.sort_by(|a, b| (a.occurred_at, &a.event_id, a.sequence).cmp(&(b.occurred_at, &b.event_id, b.sequence)));
        Ok(entries)
    }

    fn source_pos(&self, source: StoredSource) -> Result<SourcePos, StoreError> {
        Ok(match source {
            StoredSource::File { name, line } => SourcePos::File {
                path: Arc::from(self.name_of(name).ok_or_else(|| corrupt("source name"))?.as_str()),
                line,
            },
            StoredSource::Kafka { name, partition, offset } => SourcePos::Kafka {
                topic: Arc::from(self.name_of(name).ok_or_else(|| corrupt("source name"))?.as_str()),
                partition,
                offset,
            },
        })
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        Self::stats_in(&self.read()?)
    }

    /// [`Store::stats`] of the snapshot `txn`.
    pub fn stats_in(txn: &ReadTransaction) -> Result<StoreStats, StoreError> {
        let stats = txn.open_table(tables::STATS)?;
        let get = |name: &str| -> Result<u64, StoreError> { Ok(stats.get(name)?.map_or(0, |v| v.value())) };
        let pending = txn.open_table(tables::DEAD_LETTERS_PENDING)?;
        Ok(StoreStats {
            events_applied: get(stat_names::EVENTS_APPLIED)?,
            events_duplicate: get(stat_names::EVENTS_DUPLICATE)?,
            events_conflicting_duplicate: get(stat_names::EVENTS_CONFLICTING_DUPLICATE)?,
            events_invalid: get(stat_names::EVENTS_INVALID)?,
            dead_letters_pending: pending.len()?,
            refunds: get(stat_names::REFUNDS)?,
            last_applied_at: stats
                .get(stat_names::LAST_APPLIED_AT)?
                .and_then(|v| Timestamp::from_millis(v.value() as i64)),
        })
    }

    pub fn checkpoint(&self, source: &str) -> Result<Option<Checkpoint>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(tables::CHECKPOINTS)?;
        let Some(value) = table.get(source)? else {
            return Ok(None);
        };
        Checkpoint::decode(value.value()).map(Some).ok_or_else(|| corrupt(format!("checkpoint of {source}")))
    }

    /// Every checkpoint whose source name starts with `prefix`, by name.
    pub fn checkpoints_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(tables::CHECKPOINTS)?;
        let mut out = Vec::new();
        for row in table.range(prefix..)? {
            let (name, value) = row?;
            let name = name.value();
            if !name.starts_with(prefix) {
                break;
            }
            let checkpoint =
                Checkpoint::decode(value.value()).ok_or_else(|| corrupt(format!("checkpoint of {name}")))?;
            out.push((name.to_owned(), checkpoint));
        }
        Ok(out)
    }

    /// The sequence of the newest dead letter recorded (0 when none).
    pub fn last_dead_letter_sequence(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let letters = txn.open_table(tables::DEAD_LETTERS)?;
        Ok(letters.last()?.map_or(0, |(k, _)| k.value()))
    }

    /// Dead letters still in the outbox, oldest first.
    pub fn pending_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.pending_dead_letters_after(0, limit)
    }

    /// Dead letters still in the outbox with a sequence above `after`,
    /// oldest first: one destination pages past another's letters.
    pub fn pending_dead_letters_after(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.read()?;
        let pending = txn.open_table(tables::DEAD_LETTERS_PENDING)?;
        let letters = txn.open_table(tables::DEAD_LETTERS)?;
        let mut out = Vec::new();
        for row in pending.range(after.saturating_add(1)..)?.take(limit) {
            let seq = row?.0.value();
            let doc = letters.get(seq)?.ok_or_else(|| corrupt(format!("dead letter {seq} is missing")))?;
            let document = serde_json::from_slice(doc.value()).map_err(|_| corrupt(format!("dead letter {seq}")))?;
            out.push(DeadLetter { sequence: seq, document });
        }
        Ok(out)
    }

    /// Bytes the store file occupies on disk.
    pub fn file_bytes(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

pub(crate) fn get_refund_in(
    txn: &ReadTransaction,
    tenant: TenantNo,
    refund_id: &str,
) -> Result<Option<RefundState>, StoreError> {
    match row_in(txn, tenant, refund_id)? {
        Some(row) => decode_row_state(&row).map(Some),
        None => Ok(None),
    }
}

/// A refund's row, found through its home.
fn row_in(txn: &ReadTransaction, tenant: TenantNo, refund_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let homes = crate::tiers::HOMES.open_read(txn)?;
    let Some(home) = homes.get(&keys::refund_key(tenant, refund_id).as_slice())?.map(|h| h.value()) else {
        return Ok(None);
    };
    let refunds = txn.open_table(tables::REFUNDS)?;
    let row = refunds
        .get(keys::row_key(tenant, home, refund_id).as_slice())?
        .ok_or_else(|| corrupt(format!("refund {refund_id} has a home but no row")))?;
    Ok(Some(row.value().to_vec()))
}

/// The refund state held in a `refunds` row.
pub fn decode_row_state(row: &[u8]) -> Result<RefundState, StoreError> {
    let (state, _) = row::split(row).ok_or_else(|| corrupt("refund row"))?;
    RefundState::decode(state).map_err(|e| corrupt(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to write the export: {0}")]
    Write(#[from] io::Error),
}

impl From<redb::TransactionError> for ExportError {
    fn from(err: redb::TransactionError) -> ExportError {
        ExportError::Store(err.into())
    }
}

/// One table's share of the store file (see [`Store::table_sizes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSize {
    pub name: String,
    pub rows: u64,
    /// What the table takes in the file: the sum of the three below. (Its
    /// count of pages would undercount a table of large values, such as
    /// `main_filters`, whose leaves span many pages each.)
    pub bytes: u64,
    /// Keys and values as inserted, without the B-tree's overhead.
    pub stored_bytes: u64,
    /// Keys in branch pages and other metadata.
    pub metadata_bytes: u64,
    /// Unused space inside the table's pages.
    pub fragmented_bytes: u64,
}

impl Store {
    /// Every table's rows and bytes, largest first: where a store's size goes.
    pub fn table_sizes(&self) -> Result<Vec<TableSize>, StoreError> {
        use redb::{ReadableTableMetadata, TableHandle};
        let txn = self.read()?;
        let mut sizes = Vec::new();
        for handle in txn.list_tables()? {
            let name = handle.name().to_owned();
            let table = txn.open_untyped_table(handle)?;
            let stats = table.stats()?;
            sizes.push(TableSize {
                name,
                rows: table.len()?,
                bytes: stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes(),
                stored_bytes: stats.stored_bytes(),
                metadata_bytes: stats.metadata_bytes(),
                fragmented_bytes: stats.fragmented_bytes(),
            });
        }
        sizes.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        Ok(sizes)
    }
}

impl Store {
    /// Moves pages to the front of the file and truncates the free space
    /// behind them, until no more can be moved. Needs the store to itself
    /// (no reader or writer in another thread). Returns the file's size
    /// before and after, in bytes.
    pub fn compact(&mut self, path: &std::path::Path) -> Result<(u64, u64), StoreError> {
        let before = Store::file_bytes(path);
        while self.db.compact()? {}
        Ok((before, Store::file_bytes(path)))
    }

    /// The bytes of the file at `path` that no page holds: pages that
    /// copy-on-write commits freed, which redb keeps for later commits to
    /// reuse and only [`Store::compact`] gives back.
    pub fn unused_bytes(&self, path: &std::path::Path) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let stats = txn.stats()?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        txn.abort()?;
        Ok(Store::file_bytes(path).saturating_sub(used))
    }
}

/// The tenants a snapshot holds, in tenant name order, from its `names`
/// table (the store's in-memory name cache may lag a commit).
pub(crate) fn tenants_in(txn: &ReadTransaction) -> Result<Vec<(String, TenantNo)>, StoreError> {
    let names = txn.open_table(tables::NAMES)?;
    let mut tenants = Vec::new();
    for row in names.range(crate::TENANT_KIND..)? {
        let (name, number) = row?;
        let Some(tenant_id) = name.value().strip_prefix(crate::TENANT_KIND) else {
            break;
        };
        tenants.push((tenant_id.to_owned(), TenantNo(number.value())));
    }
    Ok(tenants)
}
