//! `produce` (an NDJSON file or stdin to a topic, keyed by refund id, creating
//! the topics if asked) and `probe` (a container health check that needs no
//! curl in the image).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};

pub struct ProduceParams<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub input: &'a Path,
    /// Create the topic and `<topic>.dlq` with this many partitions when
    /// they do not exist.
    pub create_partitions: Option<i32>,
    pub options: &'a [(String, String)],
}

/// What `produce` wrote: the number of messages (blank lines are skipped)
/// and their position, as `min_position` takes it: per partition written,
/// the highest offset the broker acknowledged.
pub struct Produced {
    pub count: u64,
    pub position: refunds_store::Positions,
}

/// Records each acknowledged message's offset, and counts the failures.
#[derive(Default)]
struct Acknowledged {
    offsets: std::sync::Mutex<std::collections::BTreeMap<(String, i32), i64>>,
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::OnceLock<String>,
}

impl ClientContext for Acknowledged {}

impl ProducerContext for Acknowledged {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                let mut offsets = self.offsets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let slot = offsets.entry((message.topic().to_owned(), message.partition())).or_insert(-1);
                *slot = (*slot).max(message.offset());
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = self.first_error.set(error.to_string());
            }
        }
    }
}

pub fn produce(params: &ProduceParams<'_>) -> anyhow::Result<Produced> {
    if let Some(partitions) = params.create_partitions {
        create_topics(params, partitions)?;
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", params.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("message.max.bytes", "8388608");
    for (key, value) in params.options {
        config.set(key, value);
    }
    let producer: BaseProducer<Acknowledged> =
        config.create_with_context(Acknowledged::default()).context("failed to create the producer")?;
    let reader: Box<dyn Read> = if params.input.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            std::fs::File::open(params.input).with_context(|| format!("failed to open {}", params.input.display()))?,
        )
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::new();
    let mut count = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).context("failed to read the input")? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        send_line(&producer, params.topic, text).context("failed to produce")?;
        count += 1;
    }
    producer.flush(Duration::from_secs(60)).context("not every message was acknowledged")?;
    let acknowledged = producer.context();
    let failed = acknowledged.failed.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        let error = acknowledged.first_error.get().map_or("", String::as_str);
        anyhow::bail!("{failed} of {count} messages were not delivered (first error: {error})");
    }
    let offsets = std::mem::take(&mut *acknowledged.offsets.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    Ok(Produced { count, position: refunds_store::Positions::new(offsets) })
}

/// Produces one event line keyed by its refund id (unkeyed when the line has
/// none), waiting while the producer's queue is full; serves delivery
/// callbacks on the way. `produce` and the demo producer share it.
pub fn send_line<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    line: &[u8],
) -> Result<(), rdkafka::error::KafkaError> {
    let key = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.pointer("/refund/id").and_then(|id| id.as_str()).map(str::to_owned));
    let mut record = BaseRecord::<str, [u8]>::to(topic).payload(line);
    if let Some(key) = key.as_deref() {
        record = record.key(key);
    }
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(20));
            }
            Err((error, _)) => return Err(error),
        }
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

fn create_topics(params: &ProduceParams<'_>, partitions: i32) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", params.brokers);
    for (key, value) in params.options {
        config.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = config.create().context("failed to create the admin client")?;
    let dlq = format!("{}.dlq", params.topic);
    // An event log: nothing deleted, nothing compacted (the projection and
    // every new replica or rebuild need the whole history of the topic).
    let topics = [
        NewTopic::new(params.topic, partitions, TopicReplication::Fixed(1))
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1")
            .set("cleanup.policy", "delete"),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime.block_on(admin.create_topics(&topics, &options)).context("failed to create the topics")?;
    for result in results {
        match result {
            Ok(name) => eprintln!("created topic {name}"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => eprintln!("topic {name} exists"),
            Err((name, code)) => anyhow::bail!("failed to create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// A plain HTTP/1.0 GET of `url` (`http://host:port/path`): the status code
/// and the body, headers skipped. `probe` and `verify --url` share it; the
/// read timeout is per read, so a long streamed body is fine.
pub fn http_get(url: &str, authorization: Option<&str>) -> anyhow::Result<(u16, BufReader<TcpStream>)> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("cannot resolve {authority}"))?;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))
        .with_context(|| format!("cannot connect to {authority}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n")?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    Ok((status, reader))
}

/// GETs `url` (plain `http://host:port/path`) and succeeds on a 200.
pub fn probe(url: &str) -> anyhow::Result<()> {
    let (status, _) = http_get(url, None)?;
    anyhow::ensure!(status == 200, "{url} answered {status}");
    Ok(())
}
