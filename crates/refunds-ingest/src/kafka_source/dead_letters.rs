//! The dead-letter thread: produces the outbox's durable dead letters to
//! `<topic>.dlq` and marks them sent once the broker acknowledges them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use refunds_store::Store;

use super::config::producer_config;
use super::{IngestError, KafkaParams};

struct DeliveryContext {
    delivered: Mutex<Vec<u64>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, sequence: Box<u64>) {
        match result {
            Ok(_) => self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(*sequence),
            Err((error, _)) => tracing::warn!(%error, sequence = *sequence, "dead letter not delivered; will retry"),
        }
    }
}

/// Tells the dead-letter thread how far the outbox is durable.
#[derive(Clone)]
pub(super) struct OutboxHandle(Arc<(AtomicU64, Mutex<bool>, Condvar)>);

impl OutboxHandle {
    pub(super) fn durable_up_to(&self, sequence: u64) {
        self.0.0.fetch_max(sequence, Ordering::SeqCst);
        let (_, flag, wake) = &*self.0;
        *flag.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        wake.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let (_, flag, wake) = &*self.0;
        let guard = flag.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut guard, _) =
            wake.wait_timeout_while(guard, timeout, |woken| !*woken).unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = false;
    }
}

pub(super) struct DeadLetterSender {
    handle: OutboxHandle,
    thread: thread::JoinHandle<u64>,
    stop: Arc<AtomicBool>,
}

impl DeadLetterSender {
    pub(super) fn start(store: Arc<Store>, params: &KafkaParams) -> Result<DeadLetterSender, IngestError> {
        let producer: BaseProducer<DeliveryContext> = producer_config(params)
            .create_with_context(DeliveryContext { delivered: Mutex::new(Vec::new()) })
            .map_err(IngestError::Client)?;
        // What the store holds at open is durable (a crash rolls back to the
        // last durable commit).
        let handle = OutboxHandle(Arc::new((
            AtomicU64::new(store.last_dead_letter_sequence()?),
            Mutex::new(true),
            Condvar::new(),
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let handle = handle.clone();
            let stop = stop.clone();
            let topic = params.dlq_topic.clone();
            let enabled = params.produce_dead_letters;
            thread::Builder::new()
                .name("kafka-dead-letters".to_owned())
                .spawn(move || send_dead_letters(&store, &producer, &topic, &handle, &stop, enabled))?
        };
        Ok(DeadLetterSender { handle, thread, stop })
    }

    pub(super) fn handle(&self) -> OutboxHandle {
        self.handle.clone()
    }

    /// Sends what is durable (bounded in time), then stops.
    pub(super) fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.durable_up_to(0);
        self.thread.join().unwrap_or(0)
    }
}

fn send_dead_letters(
    store: &Store,
    producer: &BaseProducer<DeliveryContext>,
    topic: &str,
    handle: &OutboxHandle,
    stop: &AtomicBool,
    enabled: bool,
) -> u64 {
    let mut sent = 0;
    let mut failures = 0u32;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let durable = handle.0.0.load(Ordering::SeqCst);
        let attempt =
            if enabled { send_once(store, producer, topic, durable, if stopping { 3 } else { 30 }) } else { Ok(0) };
        match attempt {
            Ok(n) => {
                sent += n;
                failures = 0;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "dead letters stay in the outbox; will retry");
            }
        }
        if stopping {
            return sent;
        }
        let wait = if failures > 0 {
            Duration::from_millis(500 * u64::from(failures.min(20)))
        } else {
            Duration::from_secs(1)
        };
        handle.wait(wait);
    }
}

/// Most bytes of `raw` a DLQ message carries: the broker's default
/// `max.message.bytes` is 1 MiB, and a `too_large` message may be bigger than
/// that once escaped into JSON. The store keeps the whole text.
const DLQ_RAW_LIMIT: usize = 64 * 1024;

/// The DLQ message value: the file DLQ's fields plus the source; `raw` cut
/// at [`DLQ_RAW_LIMIT`] bytes (on a character boundary) with
/// `raw_truncated` and `raw_bytes` when longer.
fn dlq_value(doc: &serde_json::Value) -> serde_json::Value {
    let raw = doc["raw"].as_str().unwrap_or_default();
    let mut value = serde_json::json!({
        "reason": doc["reason"],
        "message": doc["message"],
        "raw": raw,
        "source": doc["source"],
        "received_at": doc["received_at"],
    });
    if raw.len() > DLQ_RAW_LIMIT {
        let mut end = DLQ_RAW_LIMIT;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        value["raw"] = serde_json::json!(&raw[..end]);
        value["raw_truncated"] = serde_json::json!(true);
        value["raw_bytes"] = serde_json::json!(raw.len());
    }
    value
}

/// Produces the durable pending dead letters of Kafka sources and marks the
/// acknowledged ones sent. Returns how many were marked.
fn send_once(
    store: &Store,
    producer: &BaseProducer<DeliveryContext>,
    topic: &str,
    durable_up_to: u64,
    flush_seconds: u64,
) -> Result<u64, String> {
    let mut marked = 0;
    // Pages through the outbox: letters of other destinations (a replayed
    // file's) stay behind without blocking these.
    let mut after = 0;
    loop {
        let pending = store.pending_dead_letters_after(after, 5_000).map_err(|e| e.to_string())?;
        let Some(last) = pending.last().map(|l| l.sequence) else {
            return Ok(marked);
        };
        if pending[0].sequence > durable_up_to {
            return Ok(marked);
        }
        after = last;
        let letters: Vec<_> = pending
            .into_iter()
            .filter(|l| l.sequence <= durable_up_to && l.document.pointer("/source/topic").is_some())
            .collect();
        if letters.is_empty() {
            continue;
        }
        for letter in &letters {
            let doc = &letter.document;
            let text = |pointer: &str| match doc.pointer(pointer) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let headers = OwnedHeaders::new()
                .insert(Header { key: "reason", value: Some(text("/reason").as_bytes()) })
                .insert(Header { key: "message", value: Some(text("/message").as_bytes()) })
                .insert(Header { key: "source_topic", value: Some(text("/source/topic").as_bytes()) })
                .insert(Header { key: "source_partition", value: Some(text("/source/partition").as_bytes()) })
                .insert(Header { key: "source_offset", value: Some(text("/source/offset").as_bytes()) });
            let value = serde_json::to_vec(&dlq_value(doc)).map_err(|e| e.to_string())?;
            let key = doc.get("key").and_then(|k| k.as_str()).map(str::as_bytes);
            let mut record = BaseRecord::<[u8], [u8], Box<u64>>::with_opaque_to(topic, Box::new(letter.sequence))
                .payload(&value[..])
                .headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                        producer.poll(Duration::from_millis(50));
                        record = back;
                    }
                    Err((error, _)) => return Err(format!("cannot produce to {topic}: {error}")),
                }
            }
        }
        let flushed = producer.flush(Duration::from_secs(flush_seconds));
        let delivered = std::mem::take(
            &mut *producer.context().delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !delivered.is_empty() {
            store.mark_dead_letters_sent(&delivered).map_err(|e| e.to_string())?;
            metrics::counter!("refund_projector_dead_letters_sent_total", "destination" => "kafka")
                .increment(delivered.len() as u64);
            marked += delivered.len() as u64;
        }
        if let Err(error) = flushed {
            return Err(format!("{} dead letters not acknowledged: {error}", letters.len() - delivered.len()));
        }
        if delivered.len() < letters.len() {
            return Err(format!("{} dead letters not acknowledged", letters.len() - delivered.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_over_the_limit_is_cut_on_a_character_boundary_and_says_so() {
        let raw = format!("{}é{}", "x".repeat(DLQ_RAW_LIMIT - 1), "y".repeat(10));
        let doc =
            serde_json::json!({"reason": "too_large", "message": "m", "raw": raw, "source": {}, "received_at": "t"});
        let value = dlq_value(&doc);
        assert_eq!(value["raw"].as_str().unwrap().len(), DLQ_RAW_LIMIT - 1);
        assert_eq!(value["raw_truncated"], true);
        assert_eq!(value["raw_bytes"], raw.len());
        let small = serde_json::json!({"reason": "malformed_json", "message": "m", "raw": "{", "source": {}, "received_at": "t"});
        let value = dlq_value(&small);
        assert_eq!(value["raw"], "{");
        assert!(value.get("raw_truncated").is_none());
    }
}
