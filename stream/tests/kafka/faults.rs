//! Against librdkafka's mock cluster with injected faults: every record still arrives exactly once.

use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tidemark_stream::testing::{MockKafka, mock_cluster};

use crate::common::*;

const PATIENCE: Duration = Duration::from_secs(60);

async fn fill(kafka: &MockKafka, topic: &str, from: usize, per_partition: usize, produced: &mut Produced) {
    for p in 0..3 {
        let batch = payloads(p, from, from + per_partition);
        let offsets = kafka.produce(topic, p, &batch).await;
        record_produced(produced, p, &offsets, &batch);
    }
}

/// A topic of 3 partitions on a 1-broker mock cluster, with 200 records per partition.
async fn setup() -> (MockKafka, String, Produced) {
    let kafka = mock_cluster(1);
    let topic = unique("faults");
    kafka.create_topic(&topic, 3);
    let mut produced = Produced::new();
    fill(&kafka, &topic, 0, 200, &mut produced).await;
    (kafka, topic, produced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_then_up_loses_and_repeats_nothing() {
    let (kafka, topic, mut produced) = setup().await;
    let store = Store::default();
    let mut m = Member::new(&config(kafka.bootstrap(), &topic, &unique("g")), &store);
    consume_until(&mut [&mut m], 100, PATIENCE).await;

    kafka.cluster().broker_down(1).unwrap();
    // Whatever was already fetched may still arrive; then nothing.
    poll_for(&mut m, Duration::from_secs(2)).await;
    let during = poll_for(&mut m, Duration::from_secs(1)).await;
    assert_eq!(during, 0, "records delivered while the only broker is down");
    kafka.cluster().broker_up(1).unwrap();

    fill(&kafka, &topic, 200, 200, &mut produced).await;
    consume_until(&mut [&mut m], 1200, PATIENCE).await;
    assert_eq!(poll_for(&mut m, Duration::from_millis(500)).await, 0);
    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &produced);
    m.source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_errors_are_retried_without_loss_or_duplicates() {
    let (kafka, topic, produced) = setup().await;
    kafka.cluster().request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        ],
    );
    let store = Store::default();
    let mut m = Member::new(&config(kafka.bootstrap(), &topic, &unique("g")), &store);
    consume_until(&mut [&mut m], 600, PATIENCE).await;
    assert_eq!(poll_for(&mut m, Duration::from_millis(500)).await, 0);
    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &produced);
    assert_in_order(&m.records);
    m.source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_delays_but_delivers_everything_once() {
    let (kafka, topic, produced) = setup().await;
    let rtt = Duration::from_millis(250);
    kafka.cluster().broker_round_trip_time(1, rtt).unwrap();
    let store = Store::default();
    let started = tokio::time::Instant::now();
    let mut m = Member::new(&config(kafka.bootstrap(), &topic, &unique("g")), &store);
    consume_until(&mut [&mut m], 600, PATIENCE).await;
    // Joining the group and fetching take several round trips: the delay was really applied.
    assert!(started.elapsed() >= rtt * 3, "finished in {:?} despite a {rtt:?} round trip", started.elapsed());
    assert_eq!(poll_for(&mut m, Duration::from_millis(500)).await, 0);
    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &produced);
    assert_in_order(&m.records);
    m.source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_inside_a_record_batch_skips_the_batch_head() {
    // Each partition's 200 records went out in a few batches: offsets 10 and 195 lie inside one.
    let (kafka, topic, produced) = setup().await;
    let store = Store::default();
    store.lock().unwrap().extend([((topic.clone(), 0), 10), ((topic.clone(), 1), 195)]);
    let mut m = Member::new(&config(kafka.bootstrap(), &topic, &unique("g")), &store);
    consume_until(&mut [&mut m], 190 + 5 + 200, PATIENCE).await;
    assert_eq!(poll_for(&mut m, Duration::from_millis(500)).await, 0);
    let expected: Produced =
        produced.iter().filter(|((p, o), _)| *o >= [10, 195, 0][*p as usize]).map(|(k, v)| (*k, v.clone())).collect();
    assert_exactly_once(&topic, &m.records.iter().collect::<Vec<_>>(), &expected);
    assert_in_order(&m.records);
    m.source.close().await;
}
