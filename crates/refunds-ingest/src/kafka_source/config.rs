//! How to consume: the parameters and the librdkafka settings built from them.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::BaseProducer;

use super::IngestError;
use super::history::GapPolicy;

/// How to consume.
#[derive(Debug, Clone)]
pub struct KafkaParams {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    /// Where dead letters are produced (`<topic>.dlq` by default).
    pub dlq_topic: String,
    /// Most events per write transaction.
    pub batch_events: usize,
    /// A batch is cut at most this long after its first message.
    pub batch_wait: Duration,
    /// How often a commit is made durable (zero: every commit).
    pub durable_every: Duration,
    /// Extra librdkafka settings for the consumer and the producer (SASL,
    /// TLS, timeouts, ...). They override the defaults set here, except the
    /// ones the guarantee rests on (`enable.auto.commit`,
    /// `enable.auto.offset.store`), which are refused.
    pub options: Vec<(String, String)>,
    /// Consume each partition only below this offset (the rest is dropped):
    /// `verify` rebuilds exactly up to the live store's positions.
    pub stop_at: Option<HashMap<i32, i64>>,
    /// Produce the outbox to the DLQ topic (off for `verify`'s throwaway store).
    pub produce_dead_letters: bool,
    /// Commit offsets to Kafka for lag tools (off for throwaway groups).
    pub commit_offsets: bool,
    /// What to do with a partition whose history the store cannot get whole.
    pub on_history_gap: GapPolicy,
    /// Read the topic's settings at start (refuse compaction, warn about
    /// finite retention). Off for the demo's in-process cluster, which does
    /// not answer DescribeConfigs.
    pub check_topic: bool,
}

impl KafkaParams {
    pub fn new(brokers: &str, topic: &str, group_id: &str) -> KafkaParams {
        KafkaParams {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            group_id: group_id.to_owned(),
            dlq_topic: format!("{topic}.dlq"),
            batch_events: crate::DEFAULT_BATCH_EVENTS,
            batch_wait: Duration::from_millis(100),
            durable_every: Duration::from_millis(crate::DEFAULT_DURABLE_EVERY_MS),
            options: Vec::new(),
            stop_at: None,
            produce_dead_letters: true,
            commit_offsets: true,
            on_history_gap: GapPolicy::Hold,
            check_topic: true,
        }
    }

    /// The settings the guarantee rests on cannot be overridden, and every
    /// other one must be a setting librdkafka knows with a value it accepts
    /// (checked by creating, not connecting, a consumer and a producer).
    pub fn check_options(&self) -> Result<(), IngestError> {
        for (key, _) in &self.options {
            if PINNED_CONSUMER_OPTIONS.contains(&key.as_str()) {
                return Err(IngestError::Config(format!(
                    "kafka option {key} cannot be set: the store, not Kafka, keeps the consumer's offsets (a \
                     position the topic no longer has is a history gap; see --accept-history-gap)"
                )));
            }
        }
        consumer_config(self).create::<BaseConsumer>().map_err(|e| IngestError::Config(format!("consumer: {e}")))?;
        producer_config(self)
            .create::<BaseProducer>()
            .map_err(|e| IngestError::Config(format!("dead-letter producer: {e}")))?;
        Ok(())
    }
}

const PINNED_CONSUMER_OPTIONS: &[&str] =
    &["enable.auto.commit", "enable.auto.offset.store", "group.id", "auto.offset.reset"];

/// The consumer's librdkafka settings (public so that a benchmark can read a
/// topic with exactly the same configuration).
pub fn consumer_config(params: &KafkaParams) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &params.brokers)
        .set("group.id", &params.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never move a position behind the store's back: a position out of
        // the partition's range is reported, and judged as a history gap.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "1000")
        // A topic created after the consumer started is found within 5 s
        // (librdkafka's default is 5 min).
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("fetch.wait.max.ms", "100")
        // The prefetch limit applies per partition: each partition has a
        // queue of its own (see `merge`), and librdkafka applies it to each
        // such queue (to the consumer's one queue otherwise). 32 MiB is
        // about nine batches' worth of one of 6 partitions, and 192 MiB in
        // all for 6, where one shared queue had 256 MiB. A partition whose
        // queue is full is fetched again 100 ms later (librdkafka waits a
        // second by default).
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.queue.backoff.ms", "100")
        // Messages up to the contract's 256 KiB limit and beyond (a larger
        // one is dead-lettered as too_large, so it must still be fetched).
        .set("fetch.message.max.bytes", "4194304")
        .set("max.partition.fetch.bytes", "4194304");
    for (key, value) in &params.options {
        config.set(key, value);
    }
    config
}

pub(super) fn producer_config(params: &KafkaParams) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &params.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", "8388608")
        .set("linger.ms", "5");
    set_shared_options(&mut config, params);
    config
}

/// The user's librdkafka settings that apply to a producer or an admin
/// client: consumer-only ones would make them refuse to start.
fn set_shared_options(config: &mut ClientConfig, params: &KafkaParams) {
    for (key, value) in &params.options {
        if !is_consumer_only(key) {
            config.set(key, value);
        }
    }
}

/// The admin client's settings (topic configuration checks): the
/// connection settings of the consumer's, without its consumer-only ones.
pub(super) fn admin_config(params: &KafkaParams) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &params.brokers);
    set_shared_options(&mut config, params);
    config
}

fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("auto.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("group.")
        || key.starts_with("partition.assignment")
        || key.starts_with("max.poll")
        || key.starts_with("queued.")
        || key.starts_with("max.partition")
        || key == "isolation.level"
        || key == "enable.partition.eof"
}
