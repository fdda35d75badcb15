//! Test support, behind the `testing` feature (dev-dependencies enable it): a real Kafka-protocol broker
//! ([`Broker`], the `tansu` binary) and librdkafka's in-process mock cluster ([`mock_cluster`], for fault
//! injection), with helpers to create topics and produce records. Helpers panic with a clear message on
//! failure, as test code does.
//!
//! `tansu` is found at `$TIDEMARK_TANSU`, else `$HOME/.cargo/tansu-0.6.0/bin/tansu` (what
//! `scripts/setup.sh` installs).

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// How long a helper waits for the broker before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

/// The `tansu` binary: `$TIDEMARK_TANSU`, else where `scripts/setup.sh` installs it.
pub fn tansu_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEMARK_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cargo/tansu-0.6.0/bin/tansu")
}

/// A `tansu` broker with in-memory storage on a free port of 127.0.0.1, killed when dropped.
pub struct Broker {
    child: tokio::process::Child,
    bootstrap: String,
    log: PathBuf,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker").field("bootstrap", &self.bootstrap).field("log", &self.log).finish()
    }
}

impl Broker {
    /// Starts the broker and waits until it accepts connections. Its output goes to a log file in the
    /// temporary directory (named in any panic message).
    pub async fn start() -> Broker {
        let bin = tansu_path();
        assert!(bin.exists(), "tansu not found at {} (run scripts/setup.sh or set TIDEMARK_TANSU)", bin.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("tidemark-tansu-{port}.log"));
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("cannot reopen {}: {e}", log.display()));
        let mut child = tokio::process::Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let bootstrap = format!("127.0.0.1:{port}");
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("tansu exited with {status} before accepting connections; see {}", log.display());
            }
            if tokio::net::TcpStream::connect(&bootstrap).await.is_ok() {
                break;
            }
            assert!(started.elapsed() < PATIENCE, "tansu did not listen on {bootstrap} in time; see {}", log.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Broker { child, bootstrap, log }
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (replication factor 1) with the admin API and waits until its metadata shows it.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap_or_else(|e| panic!("cannot create an admin client: {e}"));
        let options = AdminOptions::new().operation_timeout(Some(PATIENCE)).request_timeout(Some(PATIENCE));
        let results = admin
            .create_topics(&[NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &options)
            .await
            .unwrap_or_else(|e| panic!("CreateTopics {name} failed: {e}; see {}", self.log.display()));
        for r in results {
            if let Err((topic, code)) = r {
                panic!("CreateTopics {topic} failed: {code}; see {}", self.log.display());
            }
        }
        let bootstrap = self.bootstrap.clone();
        let topic = name.to_owned();
        // Metadata requests block: run them off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            loop {
                let seen = admin
                    .inner()
                    .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(5)))
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| (t.error().is_none(), t.partitions().len())));
                if let Some((true, n)) = seen
                    && i32::try_from(n).ok() == Some(partitions)
                {
                    return;
                }
                assert!(started.elapsed() < PATIENCE, "topic {topic} not visible on {bootstrap} (last: {seen:?})");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap_or_else(|e| panic!("metadata wait failed: {e}"));
    }

    /// Produces `payloads` to one partition in order and waits for every delivery; returns their offsets.
    ///
    /// Each record is its own record batch: tansu 0.6.0 returns nothing for a fetch that starts inside a
    /// batch, which a consumer resuming from a committed offset would otherwise hit.
    pub async fn produce(&self, topic: &str, partition: i32, payloads: &[Vec<u8>]) -> Vec<i64> {
        produce_batched(&self.bootstrap, topic, partition, payloads, Some(1)).await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // kill_on_drop also does this; killing here reaps the process before the next test starts one.
        if self.child.start_kill().is_ok() {
            let _ = self.child.try_wait();
        }
        // The log is kept when a test fails (the panic message names it).
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// librdkafka's in-process mock cluster, for fault injection (`broker_down`, `request_errors`, round-trip
/// time) through [`MockKafka::cluster`]. It has no admin API: topics are created with
/// [`MockKafka::create_topic`].
pub struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
}

impl fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockKafka").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

/// A mock cluster of `brokers` brokers (ids 1..=brokers).
pub fn mock_cluster(brokers: i32) -> MockKafka {
    let cluster = MockCluster::new(brokers).unwrap_or_else(|e| panic!("cannot start the mock cluster: {e}"));
    let bootstrap = cluster.bootstrap_servers();
    MockKafka { cluster, bootstrap }
}

impl MockKafka {
    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The cluster, for fault injection.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }

    /// Creates a topic (replication factor 1).
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.cluster
            .create_topic(name, partitions, 1)
            .unwrap_or_else(|e| panic!("cannot create mock topic {name}: {e}"));
    }

    /// Produces `payloads` to one partition in order and waits for every delivery; returns their offsets.
    pub async fn produce(&self, topic: &str, partition: i32, payloads: &[Vec<u8>]) -> Vec<i64> {
        produce(&self.bootstrap, topic, partition, payloads).await
    }
}

/// Produces `payloads` to one partition in order (one producer, idempotence off, one request in flight so
/// a retry cannot reorder) and waits for every delivery; returns their offsets.
pub async fn produce(bootstrap: &str, topic: &str, partition: i32, payloads: &[Vec<u8>]) -> Vec<i64> {
    produce_batched(bootstrap, topic, partition, payloads, None).await
}

/// [`produce`] with at most `batch` records per record batch (`None`: librdkafka's default).
async fn produce_batched(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    payloads: &[Vec<u8>],
    batch: Option<usize>,
) -> Vec<i64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.timeout.ms", "60000");
    if let Some(n) = batch {
        config.set("batch.num.messages", n.to_string());
    }
    let producer: FutureProducer = config.create().unwrap_or_else(|e| panic!("cannot create a producer: {e}"));
    let mut pending = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let mut record = FutureRecord::<(), [u8]>::to(topic).partition(partition).payload(payload.as_slice());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                // The local queue is full: let deliveries drain, then retry the same record.
                Err((_, r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    let mut offsets = Vec::with_capacity(pending.len());
    for (i, delivery) in pending.into_iter().enumerate() {
        match delivery.await {
            Ok(Ok(d)) => offsets.push(d.offset),
            Ok(Err((e, _))) => panic!("record {i} to {topic}[{partition}] was not delivered: {e}"),
            Err(_) => panic!("record {i} to {topic}[{partition}]: the producer dropped the delivery"),
        }
    }
    producer.flush(Timeout::After(PATIENCE)).unwrap_or_else(|e| panic!("flushing the producer failed: {e}"));
    offsets
}
