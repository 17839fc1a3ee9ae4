//! Applying a batch: one write transaction per batch.
//!
//! Events of one refund inside a batch are coalesced: the row is read once,
//! every new event is merged, and each index key is rewritten only if its
//! value changed. Counter deltas are summed over the batch and written once
//! per counter row. The steps up to the rows are here; the index entries and
//! the counters are written by [`crate::index_jobs`].

use std::collections::HashMap as StdHashMap;

// The batch-local maps hash millions of short keys per second; foldhash is
// several times cheaper than SipHash and they face no untrusted key choice
// that could degrade them beyond one batch.
use foldhash::HashMap;

use std::ops::Bound;

use redb::{Durability, ReadableTable, Table, WriteTransaction};
use refunds_domain::{RefundEvent, RefundState, Timestamp, merge_all};

use crate::audit::{Outcome, PackedPayload, StoredSource, decode_entry, encode_entry_into};
use crate::batch::{Batch, BatchSummary, Checkpoint, Item, ItemKind, SourcePos};
use crate::index_jobs::{Change, insert_sorted, write_index_entries_and_counts};
use crate::keys::{self, Index, TenantNo};
use crate::main_keys::MainKeys;
use crate::read::{dead_letter_document, stat_names};
use crate::tiers::{self, Tiered};
use crate::{FILE_KIND, Store, StoreError, TENANT_KIND, TOPIC_KIND, row, tables};

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(tables::NAMES)?;
    txn.open_table(tables::NAMES_BY_NUMBER)?;
    txn.open_table(tables::STATS)?;
    txn.open_table(tables::REFUNDS)?;
    txn.open_table(tables::COUNTS)?;
    txn.open_table(tables::SUMMARIES)?;
    tiers::create_all(txn)?;
    txn.open_table(tables::EVENT_ID_COLLISIONS)?;
    txn.open_table(tables::AUDIT_LOG)?;
    txn.open_table(tables::AUDIT_ORPHANS)?;
    txn.open_table(tables::CHECKPOINTS)?;
    txn.open_table(tables::HISTORY_GAPS)?;
    txn.open_table(tables::DEAD_LETTERS)?;
    txn.open_table(tables::DEAD_LETTERS_PENDING)?;
    for index in Index::ALL {
        txn.open_table(index.table().expect("every listed index has a table"))?;
    }
    Ok(())
}

/// Names interned inside a transaction, published to the cache after commit.
struct Interner<'a, 't, 'b> {
    known: &'a StdHashMap<String, u32>,
    fresh: HashMap<String, u32>,
    /// (kind, name) of this batch already looked up: spares building the
    /// `kind:name` key for every event.
    in_batch: HashMap<(&'static str, &'b str), u32>,
    names: Table<'t, &'static str, u32>,
    by_number: Table<'t, u32, &'static str>,
}

impl<'b> Interner<'_, '_, 'b> {
    fn intern_in_batch(&mut self, kind: &'static str, name: &'b str) -> Result<u32, StoreError> {
        if let Some(&n) = self.in_batch.get(&(kind, name)) {
            return Ok(n);
        }
        let n = self.intern(format!("{kind}{name}"))?;
        self.in_batch.insert((kind, name), n);
        Ok(n)
    }

    fn intern(&mut self, name: String) -> Result<u32, StoreError> {
        if let Some(&n) = self.known.get(&name).or_else(|| self.fresh.get(&name)) {
            return Ok(n);
        }
        // Committed by a batch whose names are not published to the cache yet.
        if let Some(n) = self.names.get(name.as_str())?.map(|v| v.value()) {
            self.fresh.insert(name, n);
            return Ok(n);
        }
        let next = match self.by_number.last()? {
            Some((n, _)) => n.value() + 1,
            None => 1,
        };
        // The last number is the summaries' every-tenant rows'.
        if next == crate::summary::EVERY_TENANT.0 {
            return Err(StoreError::Corrupt("every name number is taken".into()));
        }
        self.names.insert(name.as_str(), next)?;
        self.by_number.insert(next, name.as_str())?;
        self.fresh.insert(name, next);
        Ok(next)
    }
}

impl Store {
    /// Applies a batch in one write transaction, with the given durability.
    /// `Durability::None` commits are atomic but survive a crash only once a
    /// later `Immediate` commit lands.
    ///
    /// The work runs in steps inside the transaction: admission (dead
    /// letters, tenants), event identity (outcomes in arrival order) while a
    /// worker looks up the refunds' homes, then the refund rows (one read and
    /// one write per refund, in key order, each refund's events merged newest
    /// first) while a worker appends the audit log and inserts the identity
    /// slots the batch claims, then the index entries and the counters, one
    /// table per job, taken in turn by this thread and a worker (each index's
    /// keys sorted and written by cursor). A redb write transaction lets
    /// distinct tables be mutated from distinct threads.
    pub fn apply_batch(&self, batch: &Batch, durability: Durability) -> Result<BatchSummary, StoreError> {
        self.apply_batch_then(batch, durability, || {})
    }

    /// [`Store::apply_batch`], calling `before_commit` once the batch's
    /// changes are made and only the commit (writing the pages, and for a
    /// durable commit syncing them) is left. A replay takes its next batch
    /// off the reader there, so that the reader parses the one after while
    /// this thread writes pages, instead of competing with the next batch's
    /// first steps for the cores.
    pub fn apply_batch_then(
        &self,
        batch: &Batch,
        durability: Durability,
        before_commit: impl FnOnce(),
    ) -> Result<BatchSummary, StoreError> {
        let started = std::time::Instant::now();
        let mut invalid_by_reason: HashMap<&'static str, u64> = HashMap::default();
        let mut txn = crate::Write::begin(&self.db)?;
        // Taken after the write transaction: one writer at a time has it.
        let mut filters = self.main_filters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = self.names();
        txn.set_durability(durability)?;
        let mut summary = BatchSummary::default();
        let fresh_names;
        let mut newest_applied = None;
        {
            let mut interner = Interner {
                known: &known.by_name,
                fresh: HashMap::default(),
                in_batch: HashMap::default(),
                names: txn.open_table(tables::NAMES)?,
                by_number: txn.open_table(tables::NAMES_BY_NUMBER)?,
            };
            let mut checkpoints = txn.open_table(tables::CHECKPOINTS)?;
            for delta in &batch.checkpoints {
                if let Some(stored) = checkpoints.get(delta.source.as_str())? {
                    let stored = Checkpoint::decode(stored.value())
                        .ok_or_else(|| StoreError::Corrupt(format!("checkpoint of {}", delta.source)))?;
                    if delta.from < stored.position && !delta.restart {
                        return Err(StoreError::CheckpointOverlap {
                            source_name: delta.source.clone(),
                            from: delta.from,
                            stored: stored.position,
                        });
                    }
                }
            }

            let audit_log = txn.open_table(tables::AUDIT_LOG)?;
            let first_seq = audit_log.last()?.map_or(1, |(k, _)| k.value() + 1);
            let valid = admit(&txn, &mut interner, batch, &mut summary, &mut invalid_by_reason)?;
            // The homes are looked up on a worker while this thread settles
            // identity: they depend only on which refunds the batch names.
            let mut homes = tiers::HOMES.open(&txn)?;
            let mut event_ids = tiers::EVENT_SLOTS.open(&txn)?;
            let (slots_filter, homes_filter) = filters.current(&txn, &event_ids, &homes)?;
            let (identified, found_homes) = std::thread::scope(|scope| {
                let found = scope.spawn(|| find_homes(&mut homes, homes_filter, &valid, first_seq));
                let identified = identify(&txn, &event_ids, slots_filter, &audit_log, first_seq, &valid, &mut summary);
                (identified, found.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            });
            let Identified { audit_rows, mut touched, new_slots, last_applied_at, redirected } = identified?;
            add_redirected(&mut touched, &redirected);
            assign_homes(&mut homes, &mut touched, found_homes?)?;
            drop(homes);

            std::thread::scope(|scope| -> Result<(), StoreError> {
                // The audit log and the claimed identity slots, on a worker
                // that runs beside the rows and the index entries.
                let audit = scope.spawn(move || -> Result<(), StoreError> {
                    append_in_order(audit_log, first_seq, &audit_rows)?;
                    for (slot, seq) in &new_slots {
                        event_ids.insert_new(&slot, seq)?;
                    }
                    Ok(())
                });

                let mut refunds = txn.open_table(tables::REFUNDS)?;
                // The rows in their key order.
                touched.sort_unstable_by(|a, b| (a.tenant, a.home, a.refund_id).cmp(&(b.tenant, b.home, b.refund_id)));
                let mut changes: Vec<Change> = Vec::with_capacity(touched.len());
                let mut new_rows = Vec::new();
                for touched in &mut touched {
                    apply_refund(touched, &mut refunds, &mut changes, &mut new_rows, &mut summary)?;
                }
                // Keys in order (touched is sorted by row key); a new refund has no row yet.
                if insert_sorted(&mut refunds, &new_rows, |(key, row)| (key.as_slice(), row.as_slice()))? > 0 {
                    return Err(StoreError::Corrupt("a refund without a home has a row".into()));
                }
                drop(refunds);

                // The index entries and the counters, on this thread and a worker.
                write_index_entries_and_counts(&txn, &changes)?;

                let mut stats = txn.open_table(tables::STATS)?;
                for (name, delta) in [
                    (stat_names::EVENTS_APPLIED, summary.applied),
                    (stat_names::EVENTS_DUPLICATE, summary.duplicate),
                    (stat_names::EVENTS_CONFLICTING_DUPLICATE, summary.conflicting_duplicate),
                    (stat_names::EVENTS_INVALID, summary.invalid),
                    (stat_names::REFUNDS, summary.refunds_created),
                ] {
                    if delta > 0 {
                        let current = stats.get(name)?.map_or(0, |v| v.value());
                        stats.insert(name, current + delta)?;
                    }
                }
                if let Some(at) = last_applied_at {
                    stats.insert(stat_names::LAST_APPLIED_AT, at.millis() as u64)?;
                    newest_applied = Some(at);
                }
                for delta in &batch.checkpoints {
                    let checkpoint = Checkpoint { position: delta.to, state: delta.state.clone() };
                    checkpoints.insert(delta.source.as_str(), checkpoint.encode().as_slice())?;
                }
                audit.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                Ok(())
            })?;
            tiers::settle_all(&txn, &mut filters)?;
            fresh_names = interner.fresh;
        }
        drop(known);
        before_commit();
        let committing = std::time::Instant::now();
        txn.commit()?;
        if matches!(durability, Durability::None)
            && let Some(writeback) = &self.writeback
        {
            writeback.nudge();
        }
        record_batch_metrics(&summary, &invalid_by_reason, batch.items.len(), started, committing, newest_applied);
        if let Some(at) = newest_applied {
            self.last_applied_ms.fetch_max(at.millis(), std::sync::atomic::Ordering::Relaxed);
        }
        if !fresh_names.is_empty() {
            let mut names = self.names.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, number) in fresh_names {
                names.by_number.insert(number, name.clone());
                names.by_name.insert(name, number);
            }
        }
        // After the names: a request woken by the new positions finds the
        // batch's new tenants.
        if !batch.checkpoints.is_empty() {
            self.publish_positions()?;
        }
        Ok(summary)
    }

    /// Removes dead letters from the outbox once their destination has them.
    pub fn mark_dead_letters_sent(&self, sequences: &[u64]) -> Result<(), StoreError> {
        let txn = crate::Write::begin(&self.db)?;
        {
            let mut pending = txn.open_table(tables::DEAD_LETTERS_PENDING)?;
            for seq in sequences {
                pending.remove(seq)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// What one committed batch did, as metrics (emitted only after the commit,
/// so an aborted transaction counts nothing).
fn record_batch_metrics(
    summary: &BatchSummary,
    invalid_by_reason: &HashMap<&'static str, u64>,
    events: usize,
    started: std::time::Instant,
    committing: std::time::Instant,
    newest_applied: Option<Timestamp>,
) {
    metrics::counter!("refund_projector_events_applied_total").increment(summary.applied);
    metrics::counter!("refund_projector_events_duplicate_total").increment(summary.duplicate);
    metrics::counter!("refund_projector_events_conflicting_duplicate_total").increment(summary.conflicting_duplicate);
    for (reason, n) in invalid_by_reason {
        metrics::counter!("refund_projector_events_invalid_total", "reason" => *reason).increment(*n);
    }
    metrics::counter!("refund_projector_refunds_created_total").increment(summary.refunds_created);
    if events > 0 {
        metrics::histogram!("refund_projector_batch_events").record(events as f64);
        metrics::histogram!("refund_projector_batch_apply_duration_seconds").record(started.elapsed().as_secs_f64());
    }
    metrics::histogram!("refund_projector_store_commit_duration_seconds").record(committing.elapsed().as_secs_f64());
    if let Some(at) = newest_applied {
        metrics::gauge!("refund_projector_last_applied_event_timestamp_seconds").set(at.millis() as f64 / 1000.0);
    }
}

/// What the identity step found: the audit entries to append (sequences
/// `first_seq..`), the identity slots to insert, and the refunds the batch
/// names.
struct Identified<'b> {
    audit_rows: Vec<AuditRow<'b>>,
    touched: Vec<Touched<'b>>,
    /// The identity slots the batch claims, sorted, with their sequences.
    new_slots: Vec<([u8; 12], u64)>,
    last_applied_at: Option<Timestamp>,
    /// Conflicting repeats whose event id was first applied to another
    /// refund than the one they name.
    redirected: Vec<Redirected>,
}

/// A conflicting repeat to list with the refund its event id was first
/// applied to.
struct Redirected {
    tenant: TenantNo,
    refund_id: String,
    seq: u64,
}

/// A valid event of the batch with its tenant and source, in arrival order:
/// event `i` gets audit sequence `first_seq + i`.
type Admitted<'b> = (&'b Item, &'b RefundEvent, TenantNo, StoredSource);

/// Step one, in arrival order: dead letters, and each valid event's tenant
/// and source.
fn admit<'b>(
    txn: &WriteTransaction,
    interner: &mut Interner<'_, '_, 'b>,
    batch: &'b Batch,
    summary: &mut BatchSummary,
    invalid_by_reason: &mut HashMap<&'static str, u64>,
) -> Result<Vec<Admitted<'b>>, StoreError> {
    let mut dead_letters = txn.open_table(tables::DEAD_LETTERS)?;
    let mut pending = txn.open_table(tables::DEAD_LETTERS_PENDING)?;
    let mut next_dead_letter = dead_letters.last()?.map_or(1, |(k, _)| k.value() + 1);
    let mut valid: Vec<Admitted<'b>> = Vec::with_capacity(batch.items.len());
    for item in &batch.items {
        let event = match &item.kind {
            ItemKind::Invalid(invalid) => {
                let doc = dead_letter_document(invalid, item);
                dead_letters.insert(next_dead_letter, doc.as_slice())?;
                pending.insert(next_dead_letter, ())?;
                next_dead_letter += 1;
                summary.invalid += 1;
                *invalid_by_reason.entry(invalid.reason.as_str()).or_default() += 1;
                continue;
            }
            ItemKind::Valid(event) => event,
        };
        let tenant = TenantNo(interner.intern_in_batch(TENANT_KIND, &event.tenant_id)?);
        let source = match &item.source {
            SourcePos::File { path, line } => {
                StoredSource::File { name: interner.intern_in_batch(FILE_KIND, path)?, line: *line }
            }
            SourcePos::Kafka { topic, partition, offset } => StoredSource::Kafka {
                name: interner.intern_in_batch(TOPIC_KIND, topic)?,
                partition: *partition,
                offset: *offset,
            },
        };
        valid.push((item, event, tenant, source));
    }
    Ok(valid)
}

/// Step two, in arrival order: event identity and outcomes. The slots this
/// batch claims are only looked up here and returned in `new_slots`, to be
/// inserted by a worker while this thread writes the rows: a lookup costs
/// about a third of an insert, and this step is the one every later step
/// waits for.
fn identify<'b>(
    txn: &WriteTransaction,
    event_ids: &Tiered<Table<'_, &'static [u8; 12], u64>>,
    slots_filter: &MainKeys,
    audit_log: &Table<'_, u64, &'static [u8]>,
    first_seq: u64,
    valid: &[Admitted<'b>],
    summary: &mut BatchSummary,
) -> Result<Identified<'b>, StoreError> {
    let mut collisions = txn.open_table(tables::EVENT_ID_COLLISIONS)?;
    let mut audit_rows: Vec<AuditRow<'b>> = Vec::with_capacity(valid.len());
    let mut touched: Vec<Touched<'b>> = Vec::new();
    let mut touched_at: HashMap<(TenantNo, &str), usize> = HashMap::default();
    let mut redirected = Vec::new();
    let mut last_applied_at: Option<Timestamp> = None;
    // The parsed payload of audit entry `seq`, whether committed or of this batch.
    let payload_of = |audit_rows: &[AuditRow<'_>], seq: u64| -> Result<serde_json::Value, StoreError> {
        match seq.checked_sub(first_seq).and_then(|i| audit_rows.get(usize::try_from(i).ok()?)) {
            Some(row) => {
                serde_json::from_slice(row.raw).map_err(|_| StoreError::Corrupt(format!("audit payload {seq}")))
            }
            None => stored_payload(audit_log, seq),
        }
    };
    // Identity slots in key order (the table's pages are then visited once,
    // in order, instead of at random), ties in arrival order so that the
    // earlier of two equal ids claims the slot; a later event of the batch
    // with the same slot finds that claim instead of the table.
    // Event `i` of the batch gets audit sequence `first_seq + i`.
    let mut slots: Vec<([u8; 12], usize)> = valid
        .iter()
        .enumerate()
        .map(|(i, (_, event, tenant, _))| (keys::event_slot(*tenant, &event.event_id), i))
        .collect();
    slots.sort_unstable();
    let mut holders: Vec<Option<u64>> = vec![None; valid.len()];
    let mut new_slots: Vec<([u8; 12], u64)> = Vec::with_capacity(slots.len());
    let mut last: Option<([u8; 12], u64)> = None;
    for (slot, i) in slots {
        let holder = match last {
            // A later event of this batch with the slot of an earlier one.
            Some((last_slot, holder)) if last_slot == slot => Some(holder),
            _ => event_ids.get_filtered(&&slot, slots_filter)?.map(|v| v.value()),
        };
        match holder {
            Some(holder) => holders[i] = Some(holder),
            None => new_slots.push((slot, first_seq + i as u64)),
        }
        last = Some((slot, holder.unwrap_or(first_seq + i as u64)));
    }

    for (&(item, event, tenant, source), holder) in valid.iter().zip(holders) {
        let seq = first_seq + audit_rows.len() as u64;
        let mut previous = None;
        if let Some(holder_seq) = holder {
            let payload = payload_of(&audit_rows, holder_seq)?;
            if payload.get("event_id").and_then(|v| v.as_str()) == Some(event.event_id.as_str()) {
                previous = Some(payload);
            } else {
                // Another id with the same 64-bit hash holds the slot.
                let key = keys::event_key(tenant, &event.event_id);
                let applied_under_id = collisions.get(key.as_slice())?.map(|v| v.value());
                match applied_under_id {
                    Some(applied_seq) => previous = Some(payload_of(&audit_rows, applied_seq)?),
                    None => {
                        collisions.insert(key.as_slice(), seq)?;
                    }
                }
            }
        }
        // A conflicting repeat belongs to the trail of the refund its event id
        // was first applied to, which the new copy may not name.
        let mut first_applied_to = None;
        let outcome = match previous {
            None => Outcome::Applied,
            Some(stored) => {
                let same = serde_json::from_slice::<serde_json::Value>(&item.raw).is_ok_and(|new| new == stored);
                if same {
                    Outcome::Duplicate
                } else {
                    first_applied_to = Some(refund_id_of(&stored, seq)?);
                    Outcome::ConflictingDuplicate
                }
            }
        };
        audit_rows.push(AuditRow {
            outcome,
            received_at: item.received_at,
            source,
            raw: &item.raw,
            packed: item.packed.as_ref(),
        });
        match outcome {
            Outcome::Applied => {
                summary.applied += 1;
                last_applied_at = last_applied_at.max(Some(item.received_at));
            }
            Outcome::Duplicate => summary.duplicate += 1,
            Outcome::ConflictingDuplicate => summary.conflicting_duplicate += 1,
        }
        if let Some(refund_id) = first_applied_to
            && refund_id != event.refund_id
        {
            redirected.push(Redirected { tenant, refund_id, seq });
            continue;
        }
        let slot = *touched_at.entry((tenant, event.refund_id.as_str())).or_insert_with(|| {
            touched.push(Touched {
                tenant,
                refund_id: event.refund_id.as_str(),
                home: None,
                new: false,
                applied: Vec::new(),
                seqs: Vec::new(),
            });
            touched.len() - 1
        });
        touched[slot].seqs.push(seq);
        if outcome == Outcome::Applied {
            touched[slot].applied.push(event);
        }
    }
    Ok(Identified { audit_rows, touched, new_slots, last_applied_at, redirected })
}

/// The refund id of a stored payload (a valid event's, so it has one).
fn refund_id_of(payload: &serde_json::Value, seq: u64) -> Result<String, StoreError> {
    payload["refund"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Corrupt(format!("audit payload {seq} names no refund")))
}

/// Adds the conflicting repeats to the refunds their event ids were first
/// applied to: to the refund's entry when the batch names it, else to a new
/// entry (its home is looked up by [`assign_homes`]). Sequences stay
/// increasing, as rows keep them.
fn add_redirected<'a>(touched: &mut Vec<Touched<'a>>, redirected: &'a [Redirected]) {
    if redirected.is_empty() {
        return;
    }
    let mut at: HashMap<(TenantNo, &str), usize> =
        touched.iter().enumerate().map(|(i, t)| ((t.tenant, t.refund_id), i)).collect();
    for Redirected { tenant, refund_id, seq } in redirected {
        let slot = *at.entry((*tenant, refund_id.as_str())).or_insert_with(|| {
            touched.push(Touched {
                tenant: *tenant,
                refund_id: refund_id.as_str(),
                home: None,
                new: false,
                applied: Vec::new(),
                seqs: Vec::new(),
            });
            touched.len() - 1
        });
        touched[slot].seqs.push(*seq);
        touched[slot].seqs.sort_unstable();
    }
}

/// The home of every refund a batch names, sorted by `(tenant, refund id)`:
/// the stored one, or a new one (`true`) from the refund's first event of
/// the batch, inserted here and taken back by [`assign_homes`] if no event
/// of the batch is applied to it.
fn find_homes<'b>(
    homes: &mut Tiered<Table<'_, &'static [u8], u32>>,
    filter: &MainKeys,
    valid: &[Admitted<'b>],
    first_seq: u64,
) -> Result<Vec<(TenantNo, &'b str, u32, bool)>, StoreError> {
    let mut named: Vec<(TenantNo, &'b str, u64)> = valid
        .iter()
        .enumerate()
        .map(|(i, (_, event, tenant, _))| (*tenant, event.refund_id.as_str(), first_seq + i as u64))
        .collect();
    // Key order, each refund once with its first sequence.
    named.sort_unstable();
    named.dedup_by(|later, first| (later.0, later.1) == (first.0, first.1));
    let mut found = Vec::with_capacity(named.len());
    for (tenant, refund_id, seq) in named {
        let key = keys::refund_key(tenant, refund_id);
        let stored = homes.get_filtered(&key.as_slice(), filter)?.map(|home| home.value());
        found.push(match stored {
            Some(home) => (tenant, refund_id, home, false),
            None => {
                let home = keys::home_of(seq);
                homes.insert_new(&key.as_slice(), &home)?;
                (tenant, refund_id, home, true)
            }
        });
    }
    Ok(found)
}

/// Gives every touched refund its home: the one [`find_homes`] found, or
/// for the refund a conflicting repeat's event id was first applied to in an
/// earlier batch (the only refund touched but not named), the stored one. A
/// new home of a refund the batch names but touches not (only conflicting
/// repeats name it) is taken back: that refund has no row.
fn assign_homes(
    homes: &mut Tiered<Table<'_, &'static [u8], u32>>,
    touched: &mut [Touched<'_>],
    found: Vec<(TenantNo, &str, u32, bool)>,
) -> Result<(), StoreError> {
    touched.sort_unstable_by(|a, b| (a.tenant, a.refund_id).cmp(&(b.tenant, b.refund_id)));
    let mut found = found.into_iter().peekable();
    let mut untouched = Vec::new();
    for touched in touched.iter_mut() {
        let key = (touched.tenant, touched.refund_id);
        while let Some(named) = found.next_if(|(tenant, refund_id, _, _)| (*tenant, *refund_id) < key) {
            untouched.push(named);
        }
        match found.next_if(|(tenant, refund_id, _, _)| (*tenant, *refund_id) == key) {
            Some((_, _, home, new)) => {
                touched.home = Some(home);
                touched.new = new;
            }
            None => {
                let stored = homes.get(&keys::refund_key(touched.tenant, touched.refund_id).as_slice())?;
                let home = stored.map(|home| home.value()).ok_or_else(|| {
                    StoreError::Corrupt(format!("refund {} has an applied event but no home", touched.refund_id))
                })?;
                touched.home = Some(home);
            }
        }
    }
    untouched.extend(found);
    for (tenant, refund_id, _, new) in untouched {
        if new {
            homes.remove(&keys::refund_key(tenant, refund_id).as_slice())?;
        }
    }
    Ok(())
}

/// Step two for one refund: read its row and merge the batch's events; write
/// the row (a new one is left in `new_rows`, to be appended in order) and
/// note the change for the index entries and counters.
fn apply_refund(
    touched: &mut Touched<'_>,
    refunds: &mut Table<'_, &'static [u8], &'static [u8]>,
    changes: &mut Vec<Change>,
    new_rows: &mut Vec<(Vec<u8>, Vec<u8>)>,
    summary: &mut BatchSummary,
) -> Result<(), StoreError> {
    let Touched { tenant, refund_id, applied, seqs, home, new: created } = touched;
    let home = home.ok_or_else(|| StoreError::Corrupt(format!("refund {refund_id} has no home")))?;
    let key = keys::row_key(*tenant, home, refund_id);
    let old_row = match created {
        true => None,
        false => Some(
            refunds
                .get(key.as_slice())?
                .ok_or_else(|| StoreError::Corrupt(format!("refund {refund_id} has a home but no row")))?
                .value()
                .to_vec(),
        ),
    };
    let (old, old_seqs) = match &old_row {
        Some(bytes) => {
            let (state, seqs) = row::split(bytes).ok_or_else(|| StoreError::Corrupt(format!("row of {refund_id}")))?;
            (Some(RefundState::decode(state).map_err(|e| StoreError::Corrupt(e.to_string()))?), seqs)
        }
        None => (None, &[][..]),
    };
    if applied.is_empty() {
        // Only repeats: the state is unchanged, the audit trail grows.
        if let Some(bytes) = &old_row {
            refunds.insert(key.as_slice(), row::append_seqs(bytes, seqs).as_slice())?;
        }
        return Ok(());
    }
    let new = merge_all(old.clone(), applied).expect("at least one event was applied");
    if old.is_none() {
        summary.refunds_created += 1;
    }
    summary.refunds_touched += 1;
    let row = row::encode(&new.encode(), old_seqs, seqs);
    match old {
        Some(_) => {
            refunds.insert(key.as_slice(), row.as_slice())?;
        }
        // Appended at the end of the tenant's rows of this home, by cursor runs.
        None => new_rows.push((key, row)),
    }
    changes.push(Change { tenant: *tenant, home, old, new });
    Ok(())
}

/// An audit entry to write: what [`encode_entry_into`] takes.
struct AuditRow<'b> {
    outcome: Outcome,
    received_at: Timestamp,
    source: StoredSource,
    raw: &'b [u8],
    packed: Option<&'b PackedPayload>,
}

/// Appends the batch's audit entries, `first_seq` onwards, after the last one
/// (encoded here, on the audit thread, into one reused buffer).
fn append_in_order(
    mut audit_log: Table<'_, u64, &'static [u8]>,
    first_seq: u64,
    rows: &[AuditRow<'_>],
) -> Result<(), StoreError> {
    let mut cursor = audit_log.upper_bound_mut(Bound::<u64>::Unbounded)?;
    let mut entry = Vec::with_capacity(4096);
    for (seq, row) in (first_seq..).zip(rows) {
        entry.clear();
        encode_entry_into(&mut entry, row.outcome, row.received_at, row.source, row.raw, row.packed);
        cursor.insert_before(seq, entry.as_slice()).map_err(redb::Error::from)?;
    }
    cursor.close()?;
    Ok(())
}

/// The parsed payload of the committed audit entry `seq`.
fn stored_payload(audit_log: &redb::Table<'_, u64, &'static [u8]>, seq: u64) -> Result<serde_json::Value, StoreError> {
    let stored = audit_log.get(seq)?.ok_or_else(|| StoreError::Corrupt(format!("audit entry {seq} is missing")))?;
    parse_payload(stored.value(), seq)
}

fn parse_payload(entry: &[u8], seq: u64) -> Result<serde_json::Value, StoreError> {
    decode_entry(entry).ok_or_else(|| StoreError::Corrupt(format!("audit entry {seq}")))?.payload_json(seq)
}

/// A refund named by valid events of the batch.
struct Touched<'b> {
    tenant: TenantNo,
    refund_id: &'b str,
    /// Where its row lives, once [`assign_homes`] has run.
    home: Option<u32>,
    /// Created by this batch (it has no row yet).
    new: bool,
    /// Events applied in this batch, in arrival order (newest first once merged).
    applied: Vec<&'b RefundEvent>,
    /// Audit sequences of every event of the batch naming this refund.
    seqs: Vec<u64>,
}
