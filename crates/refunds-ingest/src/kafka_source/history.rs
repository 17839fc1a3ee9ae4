//! One store, the whole topic, and never a partial projection in silence.
//!
//! Every instance assigns itself every partition of the topic (no group
//! rebalancing: the group id only publishes offsets for lag tools), each at
//! the store's position. Before a partition is consumed, and again whenever
//! librdkafka reports that a position fell out of the partition's range, the
//! position is compared with the partition's watermarks:
//!
//! - below the first offset still in the partition: records the store never
//!   applied were deleted (retention, `DeleteRecords`);
//! - above the partition's end: the store's offsets belong to another
//!   incarnation of the topic (deleted and recreated, another cluster,
//!   truncation after an unclean leader election);
//! - a partition the store has offsets for that the topic no longer has.
//!
//! Each is a history gap. What happens then is the [`GapPolicy`]: hold the
//! partition (not consumed; `/readyz` 503 and `/v1/status` say why), refuse
//! (`rebuild`, `verify`: the run ends with the reason), or accept (the gap is
//! recorded in the store, for its whole life, in the same transaction that
//! moves the partition's position to the partition's first offset).
//! librdkafka never resets an offset on its own (`auto.offset.reset=error`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use refunds_store::Store;

use super::config::admin_config;
use super::merge::Merger;
use super::poll::Consumer_;
use super::{IngestError, IngestStatus, KafkaParams, checkpoint_name};

/// What a consumer does with a partition whose history is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GapPolicy {
    /// Do not consume the partition; report it (`run`, by default).
    #[default]
    Hold,
    /// Record the gap in the store and consume from the partition's first
    /// offset (`--accept-history-gap`).
    Accept,
    /// End the run with the reason (`rebuild` and `verify`, by default).
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Records the store never applied are gone (retention, DeleteRecords).
    RecordsDeleted,
    /// The store's position lies past the partition's end (a recreated topic).
    OffsetBeyondEnd,
    /// The store has a position for a partition the topic does not have.
    PartitionMissing,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::RecordsDeleted => "records_deleted",
            GapReason::OffsetBeyondEnd => "offset_beyond_end",
            GapReason::PartitionMissing => "partition_missing",
        }
    }
}

/// A partition whose history the store cannot get whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryGap {
    pub topic: String,
    pub partition: i32,
    /// The next offset the store needs (its position, 0 for a fresh store).
    pub needed: i64,
    /// The partition's first offset (records deleted) or its end (offset
    /// beyond the end); 0 for a missing partition.
    pub available: i64,
    pub reason: GapReason,
    /// Where consuming resumes if the gap is accepted: the partition's first
    /// offset.
    pub resume_at: i64,
}

impl HistoryGap {
    /// What happened and what the operator can do, in one line.
    pub fn describe(&self) -> String {
        let (topic, partition, needed, available) = (&self.topic, self.partition, self.needed, self.available);
        match self.reason {
            GapReason::RecordsDeleted => format!(
                "history gap on {topic} partition {partition}: the store needs offset {needed} but the partition \
                 starts at {available} (records deleted by retention before the store applied them); the projection \
                 would miss them"
            ),
            GapReason::OffsetBeyondEnd => format!(
                "history gap on {topic} partition {partition}: the store has applied up to offset {needed} but the \
                 partition ends at {available} (the topic was recreated, or the store comes from another cluster); \
                 new messages would be dropped"
            ),
            GapReason::PartitionMissing => format!(
                "history gap on {topic} partition {partition}: the store has applied up to offset {needed} of a \
                 partition the topic no longer has (the topic was recreated)"
            ),
        }
    }
}

/// The gap between a store that needs offset `needed` next and a partition
/// holding offsets `low..high` (`None`: the partition does not exist).
pub fn find_gap(needed: i64, watermarks: Option<(i64, i64)>) -> Option<(GapReason, i64, i64)> {
    match watermarks {
        None => Some((GapReason::PartitionMissing, 0, 0)),
        Some((low, _)) if needed < low => Some((GapReason::RecordsDeleted, low, low)),
        Some((low, high)) if needed > high => Some((GapReason::OffsetBeyondEnd, high, low)),
        Some(_) => None,
    }
}

/// The topic settings that decide whether it can hold an event log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicSettings {
    pub cleanup_policy: Option<String>,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    /// What an operator should know (finite retention, settings unreadable).
    pub warnings: Vec<String>,
}

impl TopicSettings {
    /// Judges a topic's settings: `Err` (the reason) for a compacted topic.
    pub fn judge(
        topic: &str,
        cleanup_policy: Option<&str>,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
    ) -> Result<TopicSettings, String> {
        if cleanup_policy.is_some_and(|p| p.split(',').any(|p| p.trim() == "compact")) {
            return Err(format!(
                "topic {topic} has cleanup.policy={}: compaction keeps one message per key, and the topic is keyed \
                 by refund id, so it deletes lifecycle events and a new replica or rebuild would project only each \
                 refund's last event; use cleanup.policy=delete with retention.ms=-1",
                cleanup_policy.unwrap_or_default()
            ));
        }
        let mut warnings = Vec::new();
        if let Some(ms) = retention_ms.filter(|&ms| ms >= 0) {
            warnings.push(format!(
                "topic {topic} has retention.ms={ms}: once records are deleted, new replicas and rebuilds cannot \
                 build the whole projection (set retention.ms=-1, or keep an archive to replay)"
            ));
        }
        if let Some(bytes) = retention_bytes.filter(|&b| b >= 0) {
            warnings.push(format!(
                "topic {topic} has retention.bytes={bytes}: once records are deleted, new replicas and rebuilds \
                 cannot build the whole projection (set retention.bytes=-1)"
            ));
        }
        Ok(TopicSettings { cleanup_policy: cleanup_policy.map(str::to_owned), retention_ms, retention_bytes, warnings })
    }
}

/// Reads the topic's settings (DescribeConfigs). A compacted topic is an
/// error; a broker that does not answer or denies the request gives
/// settings with a warning only.
pub(super) fn check_topic(params: &KafkaParams) -> Result<TopicSettings, IngestError> {
    let unreadable = |why: String| {
        let warning = format!(
            "cannot read the configuration of topic {}: {why}; compaction and retention are unchecked",
            params.topic
        );
        tracing::warn!("{warning}");
        TopicSettings { warnings: vec![warning], ..TopicSettings::default() }
    };
    let admin: AdminClient<DefaultClientContext> = match admin_config(params).create() {
        Ok(admin) => admin,
        Err(error) => return Ok(unreadable(error.to_string())),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(runtime) => runtime,
        Err(error) => return Ok(unreadable(error.to_string())),
    };
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let resource = ResourceSpecifier::Topic(&params.topic);
    let described = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(8), admin.describe_configs([&resource], &options)).await
    });
    let resource = match described {
        Err(_) => return Ok(unreadable("no answer within 8 s".to_owned())),
        Ok(Err(error)) => return Ok(unreadable(error.to_string())),
        Ok(Ok(mut results)) => match results.pop() {
            Some(Ok(resource)) => resource,
            Some(Err(code)) => return Ok(unreadable(code.to_string())),
            None => return Ok(unreadable("an empty answer".to_owned())),
        },
    };
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    let number = |name: &str| value(name).and_then(|v| v.parse::<i64>().ok());
    let settings = TopicSettings::judge(
        &params.topic,
        value("cleanup.policy").as_deref(),
        number("retention.ms"),
        number("retention.bytes"),
    )
    .map_err(IngestError::CompactedTopic)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// A gap the writer records in the store before anything past it.
#[derive(Debug, Clone)]
pub(super) struct Acceptance {
    pub(super) gap: HistoryGap,
}

/// Changes to the consumer's assignment, made once accepted gaps are with
/// the writer (so that no message from past a gap reaches it first).
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) accept: Vec<Acceptance>,
    unassign: Vec<i32>,
    assign: Vec<(i32, i64)>,
}

impl Plan {
    pub(super) fn is_empty(&self) -> bool {
        self.accept.is_empty() && self.unassign.is_empty() && self.assign.is_empty()
    }

    /// Every partition gets its own queue before it is assigned (see
    /// [`super::merge`]), and loses it once unassigned.
    pub(super) fn execute(&self, consumer: &Consumer_, merger: &mut Merger, topic: &str) -> Result<(), IngestError> {
        if !self.unassign.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for &partition in &self.unassign {
                tpl.add_partition(topic, partition);
            }
            consumer.incremental_unassign(&tpl).map_err(IngestError::Client)?;
            for &partition in &self.unassign {
                merger.forget(partition);
            }
        }
        if !self.assign.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for &(partition, offset) in &self.assign {
                merger.split(partition)?;
                tpl.add_partition_offset(topic, partition, Offset::Offset(offset)).map_err(IngestError::Client)?;
            }
            consumer.incremental_assign(&tpl).map_err(IngestError::Client)?;
            let partitions: Vec<_> = self.assign.iter().collect();
            tracing::info!(?partitions, "partitions assigned at the store's offsets");
        }
        Ok(())
    }
}

/// The partitions this instance consumes and the ones it holds back.
pub(super) struct Assignment {
    topic: String,
    /// The topic of every polled message's source position, shared.
    topic_arc: Arc<str>,
    policy: GapPolicy,
    check_topic: bool,
    /// Consumed partitions, with the next offset expected from each.
    consuming: HashMap<i32, i64>,
    /// Partitions not consumed because of a gap (policy `Hold`).
    held: BTreeSet<i32>,
    topic_checked: bool,
    /// librdkafka reported a position out of range: check every partition.
    recheck: bool,
    next_refresh: Instant,
}

/// How often the topic's partitions are looked up (new partitions are
/// consumed within this long).
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// While the topic does not exist yet.
const REFRESH_WAITING: Duration = Duration::from_secs(1);
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

impl Assignment {
    pub(super) fn new(params: &KafkaParams) -> Assignment {
        Assignment {
            topic: params.topic.clone(),
            topic_arc: Arc::from(params.topic.as_str()),
            policy: params.on_history_gap,
            check_topic: params.check_topic,
            consuming: HashMap::new(),
            held: BTreeSet::new(),
            topic_checked: false,
            recheck: false,
            next_refresh: Instant::now(),
        }
    }

    pub(super) fn topic(&self) -> &Arc<str> {
        &self.topic_arc
    }

    /// A message was polled: the partition's next offset.
    pub(super) fn saw(&mut self, partition: i32, offset: i64) {
        if let Some(next) = self.consuming.get_mut(&partition) {
            *next = offset + 1;
        }
    }

    /// librdkafka refused a position (`auto.offset.reset=error`).
    pub(super) fn out_of_range(&mut self) {
        self.recheck = true;
        self.next_refresh = Instant::now();
    }

    pub(super) fn due(&self) -> bool {
        Instant::now() >= self.next_refresh
    }

    /// Looks the topic up, checks new partitions (and, after an
    /// out-of-range report, every partition) against the store's positions,
    /// and returns the changes to make. `Err` for a compacted topic, or a gap
    /// under [`GapPolicy::Refuse`].
    pub(super) fn refresh(
        &mut self,
        consumer: &Consumer_,
        store: &Store,
        params: &KafkaParams,
        status: &IngestStatus,
    ) -> Result<Plan, IngestError> {
        self.next_refresh = Instant::now() + REFRESH_WAITING;
        let mut plan = Plan::default();
        let metadata = match consumer.fetch_metadata(Some(&self.topic), BROKER_TIMEOUT) {
            Ok(metadata) => metadata,
            Err(error) => {
                tracing::warn!(%error, topic = %self.topic, "cannot read the topic's partitions; retrying");
                return Ok(plan);
            }
        };
        let partitions: BTreeSet<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            status.lock().topic_missing = true;
            return Ok(plan);
        }
        if self.check_topic && !self.topic_checked {
            let settings = check_topic(params)?;
            status.lock().topic_settings = Some(settings);
            self.topic_checked = true;
        }
        let prefix = format!("kafka:{}:", self.topic);
        let stored: BTreeMap<i32, i64> = store
            .checkpoints_with_prefix(&prefix)?
            .into_iter()
            .filter_map(|(name, checkpoint)| {
                let partition = name.strip_prefix(&prefix)?.parse::<i32>().ok()?;
                Some((partition, i64::try_from(checkpoint.position).unwrap_or(i64::MAX)))
            })
            .collect();

        let mut gaps = Vec::new();
        for (&partition, &needed) in &stored {
            if needed > 0 && !partitions.contains(&partition) && !self.held.contains(&partition) {
                gaps.push(self.gap(partition, needed, None));
            }
        }
        let mut fully_known = true;
        for &partition in &partitions {
            if self.consuming.contains_key(&partition) || self.held.contains(&partition) {
                continue;
            }
            let needed = stored.get(&partition).copied().unwrap_or(0);
            match consumer.fetch_watermarks(&self.topic, partition, BROKER_TIMEOUT) {
                Ok(watermarks) => {
                    // Known from now on, before librdkafka's first statistics.
                    status.set_watermarks(partition, watermarks);
                    match self.gap(partition, needed, Some(watermarks)) {
                        Some(gap) => gaps.push(Some(gap)),
                        None => {
                            self.consuming.insert(partition, needed);
                            plan.assign.push((partition, needed));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, partition, "cannot read the partition's offsets; retrying");
                    fully_known = false;
                }
            }
        }
        if std::mem::take(&mut self.recheck) {
            let mut positions: Vec<(i32, i64)> = self.consuming.iter().map(|(&p, &n)| (p, n)).collect();
            positions.sort_unstable();
            for (partition, next) in positions {
                match consumer.fetch_watermarks(&self.topic, partition, BROKER_TIMEOUT) {
                    Ok(watermarks) => {
                        if let Some(gap) = self.gap(partition, next, Some(watermarks)) {
                            self.consuming.remove(&partition);
                            plan.unassign.push(partition);
                            gaps.push(Some(gap));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, partition, "cannot read the partition's offsets; checking again");
                        self.recheck = true;
                    }
                }
            }
        }
        for gap in gaps.into_iter().flatten() {
            match self.policy {
                GapPolicy::Refuse => return Err(IngestError::HistoryGap(gap.describe())),
                GapPolicy::Hold => {
                    // The message names topic, partition and both offsets.
                    tracing::error!(
                        partition = gap.partition,
                        reason = gap.reason.as_str(),
                        "{}; the partition is not consumed and /readyz answers 503 until the instance is restarted \
                         with --accept-history-gap (or the store is rebuilt from a complete source)",
                        gap.describe()
                    );
                    self.held.insert(gap.partition);
                    status.hold(gap);
                }
                GapPolicy::Accept => {
                    tracing::warn!(
                        partition = gap.partition,
                        resume_at = gap.resume_at,
                        "{}; accepted (--accept-history-gap): consuming from offset {}, and the gap stays listed in \
                         /v1/status for the life of the store",
                        gap.describe(),
                        gap.resume_at
                    );
                    if gap.reason != GapReason::PartitionMissing {
                        self.consuming.insert(gap.partition, gap.resume_at);
                        plan.assign.push((gap.partition, gap.resume_at));
                    }
                    plan.accept.push(Acceptance { gap });
                }
            }
        }
        let mut covered: Vec<i32> = partitions.iter().copied().chain(self.held.iter().copied()).collect();
        covered.sort_unstable();
        covered.dedup();
        status.set_partitions(covered, fully_known);
        if fully_known && !self.recheck {
            self.next_refresh = Instant::now() + REFRESH_EVERY;
        }
        Ok(plan)
    }

    fn gap(&self, partition: i32, needed: i64, watermarks: Option<(i64, i64)>) -> Option<HistoryGap> {
        let (reason, available, resume_at) = find_gap(needed, watermarks)?;
        Some(HistoryGap { topic: self.topic.clone(), partition, needed, available, reason, resume_at })
    }
}

/// The store's checkpoint name of a gap's partition.
pub(super) fn gap_source(gap: &HistoryGap) -> String {
    checkpoint_name(&gap.topic, gap.partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_inside_the_partition_is_no_gap_and_one_outside_is_named() {
        // Fresh store, intact topic; caught up; midway.
        assert_eq!(find_gap(0, Some((0, 0))), None);
        assert_eq!(find_gap(0, Some((0, 5_495))), None);
        assert_eq!(find_gap(5_495, Some((3_000, 5_495))), None);
        assert_eq!(find_gap(3_000, Some((3_000, 5_495))), None);
        // Retention deleted what a fresh store (or one stopped at 2,000) needs.
        assert_eq!(find_gap(0, Some((3_000, 5_495))), Some((GapReason::RecordsDeleted, 3_000, 3_000)));
        assert_eq!(find_gap(2_000, Some((3_000, 5_495))), Some((GapReason::RecordsDeleted, 3_000, 3_000)));
        // A recreated topic: the store is past its end; resume at its start.
        assert_eq!(find_gap(3_000, Some((0, 1_000))), Some((GapReason::OffsetBeyondEnd, 1_000, 0)));
        assert_eq!(find_gap(3_000, None), Some((GapReason::PartitionMissing, 0, 0)));
    }

    #[test]
    fn a_compacted_topic_is_refused_and_finite_retention_warned_about() {
        let refused = TopicSettings::judge("t", Some("compact"), Some(-1), Some(-1)).unwrap_err();
        assert!(refused.contains("cleanup.policy=compact") && refused.contains("refund id"), "{refused}");
        assert!(TopicSettings::judge("t", Some("compact,delete"), None, None).is_err());
        assert!(TopicSettings::judge("t", Some("delete, compact"), None, None).is_err());
        let forever = TopicSettings::judge("t", Some("delete"), Some(-1), Some(-1)).unwrap();
        assert!(forever.warnings.is_empty(), "{forever:?}");
        let week = TopicSettings::judge("t", Some("delete"), Some(604_800_000), Some(-1)).unwrap();
        assert_eq!(week.warnings.len(), 1);
        assert!(week.warnings[0].contains("retention.ms=604800000"), "{week:?}");
        let both = TopicSettings::judge("t", Some("delete"), Some(1), Some(1 << 30)).unwrap();
        assert_eq!(both.warnings.len(), 2);
    }
}
