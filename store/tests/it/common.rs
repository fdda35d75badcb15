//! Scenarios every `ServingStore` must pass; the per-service folders run them against real stores.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tidemark_core::{AggValue, Dimensions, EventTime, MetricRow, Origin, Pane, RowChange, RowKey, Window};
use tidemark_store::{
    ApplyOutcome, AuditEntry, Correction, CorrectionBatch, Error, MetricFilter, ServingStore, SourceProgress,
    TopicPartition, WriteOutcome,
};

pub fn t(secs: i64) -> EventTime {
    EventTime::from_secs(secs).unwrap()
}

pub fn key(metric: &str, minute: i64, page: &str) -> RowKey {
    RowKey {
        metric: metric.into(),
        window: Window::new(t(minute * 60), t(minute * 60 + 60)).unwrap(),
        dims: Dimensions::new([("page".into(), page.into())]),
    }
}

pub fn speed_row(key: &RowKey, revision: u32, n: i64) -> MetricRow {
    MetricRow {
        key: key.clone(),
        values: BTreeMap::from([("n".into(), AggValue::Int(n)), ("avg".into(), AggValue::Float(n as f64 / 4.0))]),
        events: n.unsigned_abs(),
        origin: Origin::Speed { revision, pane: Pane::OnTime, watermark: t(key.window.end().as_micros() / 1_000_000) },
        computed_at: t(1_000),
    }
}

pub fn batch_row(key: &RowKey, epoch: i64, n: i64) -> MetricRow {
    MetricRow {
        key: key.clone(),
        values: BTreeMap::from([("n".into(), AggValue::Int(n)), ("avg".into(), AggValue::Null)]),
        events: n.unsigned_abs(),
        origin: Origin::Batch { run_id: format!("run-{epoch}"), epoch },
        computed_at: t(2_000),
    }
}

pub fn progress(pipeline: &str, epoch: u64, seq: u64, offset: i64) -> SourceProgress {
    SourceProgress {
        pipeline: pipeline.into(),
        writer_epoch: epoch,
        sequence: seq,
        offsets: BTreeMap::from([
            (TopicPartition::new("events", 0), offset),
            (TopicPartition::new("events", 1), offset * 2),
        ]),
        checkpoint: Some(format!("state@{seq}").into_bytes()),
    }
}

pub async fn read_all<S: ServingStore>(store: &S) -> Vec<MetricRow> {
    store.read_range(&MetricFilter::All, EventTime::UNIX_EPOCH, t(10_000_000)).await.unwrap()
}

/// Rows and progress commit together; a replay changes nothing; progress loads exactly as written.
pub async fn provisional_writes_are_atomic_and_replays_are_noops<S: ServingStore>(store: &S) {
    let epoch = store.claim_writer("views").await.unwrap().writer_epoch;
    let k1 = key("views", 1, "/a");
    let k2 = key("views", 1, "/b");
    assert_eq!(store.load_progress("views").await.unwrap(), None);
    let p1 = progress("views", epoch, 1, 10);
    let out = store
        .write_provisional(&[RowChange::Upsert(speed_row(&k1, 0, 5)), RowChange::Upsert(speed_row(&k2, 0, 7))], &p1)
        .await
        .unwrap();
    let WriteOutcome::Committed(stats) = out else { panic!("{out:?}") };
    assert_eq!((stats.offered, stats.applied), (2, 2));
    assert_eq!(store.load_progress("views").await.unwrap(), Some(p1.clone()));
    let rows = read_all(store).await;
    assert_eq!(rows, vec![speed_row(&k1, 0, 5), speed_row(&k2, 0, 7)]);

    // the same write again (e.g. retried after an ambiguous error) is recognized by the marker
    let marker = store.committed_marker("views").await.unwrap().unwrap();
    assert!(marker.covers(&p1));
    let again = store.write_provisional(&[RowChange::Upsert(speed_row(&k1, 9, 500))], &p1).await.unwrap();
    assert_eq!(again, WriteOutcome::AlreadyCommitted);
    assert_eq!(read_all(store).await, rows, "a replay must change nothing");

    // the next write: revision 1 replaces revision 0; revision 0 again does not
    let p2 = SourceProgress { checkpoint: None, ..progress("views", epoch, 2, 20) };
    store
        .write_provisional(&[RowChange::Upsert(speed_row(&k1, 1, 6)), RowChange::Upsert(speed_row(&k2, 0, 99))], &p2)
        .await
        .unwrap();
    assert_eq!(read_all(store).await, vec![speed_row(&k1, 1, 6), speed_row(&k2, 0, 7)]);
    assert_eq!(store.load_progress("views").await.unwrap(), Some(p2));

    // a write with only progress (no rows) still commits its progress
    let p3 = progress("views", epoch, 3, 30);
    assert!(matches!(store.write_provisional(&[], &p3).await.unwrap(), WriteOutcome::Committed(_)));
    assert_eq!(store.load_progress("views").await.unwrap(), Some(p3));
}

/// A zombie writer of an older epoch is refused and changes nothing.
pub async fn zombie_writers_are_fenced<S: ServingStore>(store: &S) {
    let old = store.claim_writer("clicks").await.unwrap().writer_epoch;
    let k = key("clicks", 2, "/z");
    store.write_provisional(&[RowChange::Upsert(speed_row(&k, 0, 1))], &progress("clicks", old, 1, 1)).await.unwrap();
    let new = store.claim_writer("clicks").await.unwrap();
    assert_eq!(new.writer_epoch, old + 1);
    // the new writer resumes from what the old one committed
    assert_eq!(store.load_progress("clicks").await.unwrap(), Some(progress("clicks", old, 1, 1)));
    let err = store
        .write_provisional(&[RowChange::Upsert(speed_row(&k, 5, 555))], &progress("clicks", old, 2, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced { epoch, current, .. } if epoch == old && current == old + 1), "{err}");
    assert!(!err.retryable());
    assert_eq!(read_all(store).await, vec![speed_row(&k, 0, 1)]);
    assert_eq!(store.load_progress("clicks").await.unwrap(), Some(progress("clicks", old, 1, 1)));
    store
        .write_provisional(&[RowChange::Upsert(speed_row(&k, 1, 2))], &progress("clicks", new.writer_epoch, 1, 3))
        .await
        .unwrap();
    assert_eq!(read_all(store).await, vec![speed_row(&k, 1, 2)]);
}

/// Batch beats speed, deletions are not resurrectable, retractions and deltas behave.
pub async fn precedence_and_deletions<S: ServingStore>(store: &S) {
    let epoch = store.claim_writer("p").await.unwrap().writer_epoch;
    let (a, b, c) = (key("m", 3, "/a"), key("m", 3, "/b"), key("m", 3, "/c"));
    let mut seq = 0;
    let mut write = |changes: Vec<RowChange>| {
        seq += 1;
        let p = progress("p", epoch, seq, seq as i64);
        async move { store.write_provisional(&changes, &p).await.unwrap() }
    };
    write(vec![
        RowChange::Upsert(speed_row(&a, 2, 20)),
        RowChange::Upsert(speed_row(&b, 2, 20)),
        RowChange::Upsert(speed_row(&c, 2, 20)),
    ])
    .await;
    // batch replaces speed; a batch deletion removes b
    let batch = CorrectionBatch {
        id: "fix-1".into(),
        run_id: "run-5".into(),
        epoch: 5,
        changes: vec![Correction::Upsert(batch_row(&a, 5, 21)), Correction::Delete(b.clone())],
        audit: vec![],
    };
    assert!(matches!(store.apply_corrections(&batch).await.unwrap(), ApplyOutcome::Applied(_)));
    // stale and newer speed writes alike cannot override the batch row or resurrect the deleted one
    write(vec![RowChange::Upsert(speed_row(&a, 99, 990)), RowChange::Upsert(speed_row(&b, 99, 990))]).await;
    // a speed retraction never removes a batch row; it removes c (revision 2 <= 3)
    write(vec![
        RowChange::Retract { key: a.clone(), revision: 100 },
        RowChange::Retract { key: c.clone(), revision: 3 },
    ])
    .await;
    assert_eq!(read_all(store).await, vec![batch_row(&a, 5, 21)]);
    // an older replay of c (revision 3 <= retraction) stays retracted; revision 4 brings it back
    write(vec![RowChange::Upsert(speed_row(&c, 3, 30))]).await;
    assert_eq!(read_all(store).await, vec![batch_row(&a, 5, 21)]);
    write(vec![RowChange::Upsert(speed_row(&c, 4, 40))]).await;
    assert_eq!(read_all(store).await, vec![batch_row(&a, 5, 21), speed_row(&c, 4, 40)]);
    // an older batch epoch loses; a newer one wins, and can re-create a deleted key
    let older = CorrectionBatch {
        id: "fix-0".into(),
        run_id: "run-4".into(),
        epoch: 4,
        changes: vec![Correction::Upsert(batch_row(&a, 4, 1)), Correction::Upsert(batch_row(&b, 4, 1))],
        audit: vec![],
    };
    store.apply_corrections(&older).await.unwrap();
    assert_eq!(read_all(store).await, vec![batch_row(&a, 5, 21), speed_row(&c, 4, 40)]);
    let newer = CorrectionBatch {
        id: "fix-2".into(),
        run_id: "run-6".into(),
        epoch: 6,
        changes: vec![Correction::Upsert(batch_row(&b, 6, 60))],
        audit: vec![],
    };
    store.apply_corrections(&newer).await.unwrap();
    assert_eq!(read_all(store).await, vec![batch_row(&a, 5, 21), batch_row(&b, 6, 60), speed_row(&c, 4, 40)]);

    // late-policy deltas: recorded beside the row, once per (key, revision)
    let mut delta = speed_row(&c, 5, 3);
    delta.origin = Origin::Speed { revision: 5, pane: Pane::Late, watermark: t(400) };
    write(vec![RowChange::Delta(delta.clone())]).await;
    let mut replayed = delta.clone();
    replayed.values.insert("n".into(), AggValue::Int(1234));
    write(vec![RowChange::Delta(replayed)]).await;
    let deltas = store.read_deltas(&MetricFilter::one("m"), t(0), t(1_000_000)).await.unwrap();
    assert_eq!(deltas, vec![delta.clone()]);
    assert_eq!(read_all(store).await.len(), 3, "deltas leave the rows unchanged");
    // a batch row for c holds the truth (late events included): its deltas no longer count, and a delta
    // a lagging speed layer writes after the correction does not count either (issue 6: row + deltas
    // must never count a late event twice)
    let mut other = speed_row(&a, 7, 2);
    other.origin = Origin::Speed { revision: 7, pane: Pane::Late, watermark: t(400) };
    write(vec![RowChange::Delta(other.clone())]).await;
    let fix_c = CorrectionBatch {
        id: "fix-3".into(),
        run_id: "run-7".into(),
        epoch: 7,
        changes: vec![Correction::Upsert(batch_row(&c, 7, 43))],
        audit: vec![],
    };
    store.apply_corrections(&fix_c).await.unwrap();
    let mut stale = speed_row(&c, 6, 1);
    stale.origin = Origin::Speed { revision: 6, pane: Pane::Late, watermark: t(500) };
    write(vec![RowChange::Delta(stale)]).await;
    let deltas = store.read_deltas(&MetricFilter::one("m"), t(0), t(1_000_000)).await.unwrap();
    assert_eq!(deltas, vec![], "a is a batch row too, so its delta is superseded as well");
    // a speed row's deltas still count: d has a speed row and a delta
    let d = key("m", 3, "/d");
    write(vec![RowChange::Upsert(speed_row(&d, 0, 5))]).await;
    let mut late_d = speed_row(&d, 1, 1);
    late_d.origin = Origin::Speed { revision: 1, pane: Pane::Late, watermark: t(400) };
    write(vec![RowChange::Delta(late_d.clone())]).await;
    let deltas = store.read_deltas(&MetricFilter::one("m"), t(0), t(1_000_000)).await.unwrap();
    assert_eq!(deltas, vec![late_d]);
    // filters
    assert!(store.read_range(&MetricFilter::one("other"), t(0), t(1_000_000)).await.unwrap().is_empty());
    assert!(store.read_range(&MetricFilter::All, t(4 * 60), t(1_000_000)).await.unwrap().is_empty());
}

/// Applying the same correction batch twice changes nothing the second time.
pub async fn same_correction_batch_twice_changes_nothing<S: ServingStore>(store: &S) {
    let epoch = store.claim_writer("cb").await.unwrap().writer_epoch;
    let (a, b) = (key("cb", 7, "/a"), key("cb", 7, "/b"));
    store
        .write_provisional(
            &[RowChange::Upsert(speed_row(&a, 0, 1)), RowChange::Upsert(speed_row(&b, 0, 2))],
            &progress("cb", epoch, 1, 1),
        )
        .await
        .unwrap();
    let batch = CorrectionBatch {
        id: "run-9:cb:7".into(),
        run_id: "run-9".into(),
        epoch: 9,
        changes: vec![Correction::Upsert(batch_row(&a, 9, 3)), Correction::Delete(b.clone())],
        audit: vec![
            AuditEntry {
                key: a.clone(),
                aggregate: "n".into(),
                old: Some(AggValue::Int(1)),
                new: Some(AggValue::Int(3)),
                cause: "late_event".into(),
            },
            AuditEntry {
                key: b.clone(),
                aggregate: "n".into(),
                old: Some(AggValue::Int(2)),
                new: None,
                cause: "phantom_row".into(),
            },
        ],
    };
    assert!(!store.corrections_applied(&batch.id).await.unwrap());
    assert_eq!(store.corrections_applied_at(&batch.id).await.unwrap(), None, "not applied yet");
    let first = store.apply_corrections(&batch).await.unwrap();
    let ApplyOutcome::Applied(stats) = first else { panic!("{first:?}") };
    assert_eq!((stats.offered, stats.applied), (2, 2));
    let rows = read_all(store).await;
    assert_eq!(rows, vec![batch_row(&a, 9, 3)]);
    let audit = store.audit_log(Some(&batch.id)).await.unwrap();
    assert_eq!(audit.iter().map(|e| e.entry.clone()).collect::<Vec<_>>(), batch.audit);
    assert!(audit.iter().all(|e| e.run_id == "run-9" && e.batch_id == batch.id));
    assert!(store.corrections_applied(&batch.id).await.unwrap());
    // one application time per batch: its audit lines'
    let at = store.corrections_applied_at(&batch.id).await.unwrap().expect("applied");
    assert!(audit.iter().all(|e| e.applied_at == at), "{at} vs {audit:?}");

    assert_eq!(store.apply_corrections(&batch).await.unwrap(), ApplyOutcome::AlreadyApplied);
    assert_eq!(store.corrections_applied_at(&batch.id).await.unwrap(), Some(at), "a replay keeps the time");
    assert_eq!(read_all(store).await, rows);
    assert_eq!(store.audit_log(Some(&batch.id)).await.unwrap(), audit);
    assert_eq!(store.audit_log(None).await.unwrap().len(), 2);
}

/// Hostile strings are stored verbatim (and read back equal) or refused with a clear error.
pub async fn hostile_values_are_verbatim_or_refused<S: ServingStore>(store: &S) {
    let epoch = store.claim_writer("hostile").await.unwrap().writer_epoch;
    let nasty = [
        "'; DROP TABLE serving_rows; --",
        "\"quoted\" name",
        "semi;colon -- comment /* x */",
        "ünïcødé 指标 🚀",
        "back\\slash $1 %s {s}",
    ];
    let mut changes = Vec::new();
    for (i, s) in nasty.iter().enumerate() {
        let mut k = key(s, 10 + i as i64, s);
        k.dims = Dimensions::new([("page".into(), (*s).into()), ("q".into(), "a&b=c%".into())]);
        let mut row = speed_row(&k, 0, i as i64);
        row.values.insert((*s).into(), AggValue::Int(1));
        changes.push(RowChange::Upsert(row));
    }
    store.write_provisional(&changes, &progress("hostile", epoch, 1, 1)).await.unwrap();
    let mut expected: Vec<MetricRow> = changes
        .iter()
        .map(|c| match c {
            RowChange::Upsert(r) => r.clone(),
            _ => unreachable!(),
        })
        .collect();
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    let mut got = read_all(store).await;
    got.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(got, expected);
    // hostile run ids and causes are data too
    let batch = CorrectionBatch {
        id: "hostile-1".into(),
        run_id: "run'); DELETE FROM x; --".into(),
        epoch: 1,
        changes: vec![],
        audit: vec![AuditEntry {
            key: key("x", 1, "'"),
            aggregate: "n\"".into(),
            old: None,
            new: Some(AggValue::Float(0.5)),
            cause: "--; DROP".into(),
        }],
    };
    store.apply_corrections(&batch).await.unwrap();
    let audit = store.audit_log(Some("hostile-1")).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].run_id, "run'); DELETE FROM x; --");
    assert_eq!(audit[0].entry, batch.audit[0]);

    // NUL cannot be stored verbatim by every store, so both refuse it
    let nul = key("a\0b", 1, "x");
    let err = store
        .write_provisional(&[RowChange::Upsert(speed_row(&nul, 0, 1))], &progress("hostile", epoch, 2, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let mut nul_dims = key("m", 1, "x");
    nul_dims.dims = Dimensions::new([("page".into(), "a\0".into())]);
    // a NUL in a dimension value is escaped by the canonical encoding (`%00`, core f78742e): stored and read
    // back verbatim
    let got = store
        .write_provisional(&[RowChange::Upsert(speed_row(&nul_dims, 0, 1))], &progress("hostile", epoch, 2, 2))
        .await;
    assert!(matches!(got, Ok(WriteOutcome::Committed(_))), "{got:?}");
    assert!(read_all(store).await.contains(&speed_row(&nul_dims, 0, 1)));
    // identifiers that end up in names or paths are validated
    for bad in ["", "p'; DROP TABLE progress; --", "a/b", "a b", "ü"] {
        assert!(matches!(store.claim_writer(bad).await, Err(Error::InvalidInput { .. })), "{bad:?}");
        assert!(matches!(store.corrections_applied(bad).await, Err(Error::InvalidInput { .. })), "{bad:?}");
    }
    // nothing above was executed as SQL: all rows are still there (plus the NUL-dimension row)
    assert_eq!(read_all(store).await.len(), nasty.len() + 1);
    assert_eq!(store.load_progress("hostile").await.unwrap(), Some(progress("hostile", epoch, 2, 2)));
}

/// One operation of the race, as planned.
#[derive(Debug, Clone)]
enum Op {
    Speed { key: usize, revision: u32 },
    Batch { key: usize, epoch: i64, delete: bool },
}

/// Result of the randomized race.
#[derive(Debug, Default)]
pub struct RaceReport {
    pub rounds: usize,
    pub writes: usize,
    pub violations: usize,
    /// Changes a store refused because a newer row was already there (stale writes).
    pub refused: u64,
    /// Pairs of writes by different writers to a common key whose commit intervals overlapped in time.
    pub overlapping_pairs: usize,
    /// Redone after a race, as the writes reported it (`WriteStats::retries`).
    pub retries: u64,
}

/// Deterministic xorshift so that failures can be reproduced from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Speed writers and batch writers race on the same keys; after each round every key must hold the row
/// precedence dictates. `speed` and `batch` are separate store instances (separate connections or table
/// handles), as separate processes would have.
pub async fn precedence_race<S: ServingStore + 'static>(
    speed: Vec<Arc<S>>,
    batch: Vec<Arc<S>>,
    rounds: usize,
    keys: usize,
    ops_per_writer: usize,
    seed: u64,
) -> RaceReport {
    let mut rng = Rng::new(seed);
    let mut report = RaceReport { rounds, ..Default::default() };
    let mut epochs = Vec::new();
    for (w, s) in speed.iter().enumerate() {
        epochs.push(s.claim_writer(&format!("race-{w}")).await.unwrap().writer_epoch);
    }
    let mut seqs = vec![0u64; speed.len()];
    let n_speed = speed.len() as u32;
    let n_batch = batch.len() as i64;
    for round in 0..rounds {
        let metric = format!("race{round}");
        let keyof = |i: usize| key(&metric, 5, &format!("/k{i}"));
        // plan: every writer gets its list of ops; revisions/epochs are unique across writers
        let mut plans: Vec<Vec<Vec<Op>>> = Vec::new();
        for w in 0..speed.len() {
            let mut writes = Vec::new();
            for _ in 0..ops_per_writer {
                let mut ops = Vec::new();
                for k in 0..keys {
                    if rng.below(3) > 0 {
                        ops.push(Op::Speed { key: k, revision: rng.below(50) as u32 * n_speed + w as u32 });
                    }
                }
                writes.push(ops);
            }
            plans.push(writes);
        }
        for w in 0..batch.len() {
            let mut writes = Vec::new();
            for _ in 0..ops_per_writer {
                let mut ops = Vec::new();
                for k in 0..keys {
                    if rng.below(2) == 0 {
                        let epoch = rng.below(20) as i64 * n_batch + w as i64;
                        ops.push(Op::Batch { key: k, epoch, delete: rng.below(4) == 0 });
                    }
                }
                writes.push(ops);
            }
            plans.push(writes);
        }
        // run all writers concurrently
        let mut tasks = Vec::new();
        for (w, writes) in plans.iter().cloned().enumerate() {
            let is_speed = w < speed.len();
            let store = if is_speed { speed[w].clone() } else { batch[w - speed.len()].clone() };
            let metric = metric.clone();
            let first_seq = if is_speed { seqs[w] } else { 0 };
            let epoch = if is_speed { epochs[w] } else { 0 };
            tasks.push(tokio::spawn(async move {
                let mut log = Vec::new();
                let mut refused = 0u64;
                let mut retries = 0u64;
                for (i, ops) in writes.into_iter().enumerate() {
                    let start = Instant::now();
                    let keyof = |k: usize| key(&metric, 5, &format!("/k{k}"));
                    if is_speed {
                        let changes: Vec<RowChange> = ops
                            .iter()
                            .map(|op| match op {
                                Op::Speed { key, revision, .. } => {
                                    RowChange::Upsert(speed_row(&keyof(*key), *revision, i64::from(*revision)))
                                }
                                Op::Batch { .. } => unreachable!(),
                            })
                            .collect();
                        let p = progress(&format!("race-{w}"), epoch, first_seq + i as u64 + 1, i as i64);
                        match store.write_provisional(&changes, &p).await.unwrap() {
                            WriteOutcome::Committed(s) => {
                                refused += s.offered - s.applied;
                                retries += u64::from(s.retries);
                            }
                            WriteOutcome::AlreadyCommitted => panic!("fresh sequence reported as replay"),
                        }
                    } else {
                        let changes: Vec<Correction> = ops
                            .iter()
                            .map(|op| match op {
                                Op::Batch { key, epoch, delete: true, .. } => {
                                    let _ = epoch;
                                    Correction::Delete(keyof(*key))
                                }
                                Op::Batch { key, epoch, .. } => {
                                    Correction::Upsert(batch_row(&keyof(*key), *epoch, 1_000_000 + *epoch))
                                }
                                Op::Speed { .. } => unreachable!(),
                            })
                            .collect();
                        // one batch per epoch: split ops of different epochs into separate batches
                        let mut by_epoch: BTreeMap<i64, Vec<(Correction, usize)>> = BTreeMap::new();
                        for (op, c) in ops.iter().zip(changes) {
                            if let Op::Batch { epoch, key, .. } = op {
                                by_epoch.entry(*epoch).or_default().push((c, *key));
                            }
                        }
                        for (ep, cs) in by_epoch {
                            let batch = CorrectionBatch {
                                id: format!("{metric}-w{w}-{i}-e{ep}"),
                                run_id: format!("run-{ep}"),
                                epoch: ep,
                                changes: cs.into_iter().map(|(c, _)| c).collect(),
                                audit: vec![],
                            };
                            match store.apply_corrections(&batch).await.unwrap() {
                                ApplyOutcome::Applied(s) => {
                                    refused += s.offered - s.applied;
                                    retries += u64::from(s.retries);
                                }
                                ApplyOutcome::AlreadyApplied => panic!("fresh batch reported as applied"),
                            }
                        }
                    }
                    log.push((start, Instant::now(), ops));
                }
                (w, log, refused, retries)
            }));
        }
        let mut logs = Vec::new();
        for task in tasks {
            let (w, log, refused, retries) = task.await.unwrap();
            report.refused += refused;
            report.retries += retries;
            report.writes += log.len();
            if w < speed.len() {
                seqs[w] += log.len() as u64;
            }
            logs.push((w, log));
        }
        // contention evidence: overlapping commit intervals of different writers on a common key
        for (i, (wa, la)) in logs.iter().enumerate() {
            for (wb, lb) in logs.iter().skip(i + 1) {
                debug_assert_ne!(wa, wb);
                for (s1, e1, ops1) in la {
                    for (s2, e2, ops2) in lb {
                        let overlap = s1 < e2 && s2 < e1;
                        let common = ops1.iter().any(|a| ops2.iter().any(|b| op_key(a) == op_key(b)));
                        if overlap && common {
                            report.overlapping_pairs += 1;
                        }
                    }
                }
            }
        }
        // expected final state per key
        let mut expected: HashMap<usize, Option<MetricRow>> = HashMap::new();
        for k in 0..keys {
            let mut best_batch: Option<(i64, bool)> = None; // (epoch, delete), later op of equal epoch wins
            let mut best_speed: Option<u32> = None;
            for writes in &plans {
                for ops in writes {
                    for op in ops {
                        match op {
                            Op::Batch { key, epoch, delete }
                                if *key == k && best_batch.is_none_or(|(e, _)| *epoch >= e) =>
                            {
                                best_batch = Some((*epoch, *delete));
                            }
                            Op::Speed { key, revision } if *key == k && best_speed.is_none_or(|r| *revision > r) => {
                                best_speed = Some(*revision);
                            }
                            _ => {}
                        }
                    }
                }
            }
            let row = match (best_batch, best_speed) {
                (Some((_, true)), _) => None,
                (Some((e, false)), _) => Some(batch_row(&keyof(k), e, 1_000_000 + e)),
                (None, Some(r)) => Some(speed_row(&keyof(k), r, i64::from(r))),
                (None, None) => None,
            };
            expected.insert(k, row);
        }
        let got = speed[0].read_range(&MetricFilter::one(metric.clone()), t(0), t(1_000_000)).await.unwrap();
        let got: HashMap<String, MetricRow> = got.into_iter().map(|r| (r.key.dims.encode(), r)).collect();
        for k in 0..keys {
            let want = expected[&k].clone();
            let have = got.get(&keyof(k).dims.encode()).cloned();
            if want != have {
                report.violations += 1;
                eprintln!("round {round} key {k}: expected {want:?}, stored {have:?}");
            }
        }
    }
    report
}

fn op_key(op: &Op) -> usize {
    match op {
        Op::Speed { key, .. } | Op::Batch { key, .. } => *key,
    }
}

/// Environment of the SIGKILL child: which store (`postgres` or `delta`) and where.
const CRASH_STORE: &str = "TIDEMARK_CRASH_STORE";
const CRASH_TARGET: &str = "TIDEMARK_CRASH_TARGET";
/// Storage options of the store, one `key=value` per line.
const CRASH_OPTIONS: &str = "TIDEMARK_CRASH_OPTIONS";
const CRASH_KEYS: usize = 25;

async fn open_crash_store(kind: &str, target: &str, options: &HashMap<String, String>) -> Box<dyn ServingStore> {
    match kind {
        "postgres" => Box::new(tidemark_store::PostgresStore::connect(target, "serving").await.unwrap()),
        "delta" => {
            let mut config = tidemark_store::DeltaStoreConfig::new(target);
            config.storage_options = options.clone();
            Box::new(config.build().await.unwrap())
        }
        other => panic!("unknown store {other}"),
    }
}

/// The writer that the SIGKILL tests run as a subprocess (this test binary, filtered to this test).
/// Every write sets all keys to value `g` and commits offset `g`, so a consistent store has all rows
/// equal to the committed offset.
#[tokio::test]
#[ignore = "run as a subprocess by the SIGKILL tests"]
async fn sigkill_writer_child() {
    let (Ok(kind), Ok(target)) = (std::env::var(CRASH_STORE), std::env::var(CRASH_TARGET)) else { return };
    let options: HashMap<String, String> = std::env::var(CRASH_OPTIONS)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let store = open_crash_store(&kind, &target, &options).await;
    let epoch = store.claim_writer("crash").await.unwrap().writer_epoch;
    let start = store.load_progress("crash").await.unwrap().map_or(0, |p| p.offsets[&TopicPartition::new("events", 0)]);
    for seq in 1u64.. {
        let g = start + seq as i64;
        let changes: Vec<RowChange> = (0..CRASH_KEYS)
            .map(|k| RowChange::Upsert(speed_row(&key("crash", 1, &format!("/k{k}")), g as u32, g)))
            .collect();
        let p = SourceProgress { checkpoint: Some(g.to_string().into_bytes()), ..progress("crash", epoch, seq, g) };
        println!("begin {g}");
        store.write_provisional(&changes, &p).await.unwrap();
        println!("done {g}");
    }
}

/// What the SIGKILL runs saw.
#[derive(Debug, Default)]
pub struct CrashReport {
    pub kills: usize,
    /// Kills that landed after the child announced a write and before it reported it done.
    pub mid_commit: usize,
    /// Of those, how many writes turned out committed.
    pub mid_commit_landed: usize,
    pub final_offset: i64,
}

/// Starts the writer child `kills` times and SIGKILLs it at a random moment within `spread_ms` after its
/// first write began; after each kill the store must hold all of a write or none of it.
pub async fn sigkill_atomicity(
    kind: &str,
    target: &str,
    options: &HashMap<String, String>,
    kills: usize,
    spread_ms: u64,
    seed: u64,
) -> CrashReport {
    use tokio::io::AsyncBufReadExt;
    let mut rng = Rng::new(seed);
    let mut report = CrashReport::default();
    let exe = std::env::current_exe().unwrap();
    let checker = open_crash_store(kind, target, options).await;
    let options_env: String = options.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    checker.init().await.unwrap();
    for _ in 0..kills {
        let mut child = tokio::process::Command::new(&exe)
            .args(["common::sigkill_writer_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CRASH_STORE, kind)
            .env(CRASH_TARGET, target)
            .env(CRASH_OPTIONS, &options_env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // wait for the first write to begin, then let it run for a random time
        loop {
            let line = lines.next_line().await.unwrap().expect("child exited before writing");
            if line.starts_with("begin ") {
                break;
            }
        }
        let delay = std::time::Duration::from_millis(rng.below(spread_ms.max(1)));
        let mut last: Option<String> = None;
        let _ = tokio::time::timeout(delay, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("begin ") || line.starts_with("done ") {
                    last = Some(line);
                }
            }
        })
        .await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        // drain what the child printed before it died
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("begin ") || line.starts_with("done ") {
                last = Some(line);
            }
        }
        report.kills += 1;
        let (progress, rows) = consistent_read(checker.as_ref()).await;
        let Some(progress) = progress else {
            assert!(rows.is_empty(), "rows without progress: {rows:?}");
            continue;
        };
        let g = progress.offsets[&TopicPartition::new("events", 0)];
        assert_eq!(progress.checkpoint, Some(g.to_string().into_bytes()), "checkpoint of another write");
        assert_eq!(rows.len(), CRASH_KEYS, "offset {g}: a partial write is visible");
        for r in &rows {
            assert_eq!(r, &speed_row(&r.key, g as u32, g), "row from a write other than the committed {g}");
        }
        if let Some(begun) = last.as_deref().and_then(|l| l.strip_prefix("begin ")) {
            report.mid_commit += 1;
            let begun: i64 = begun.parse().unwrap();
            assert!(g == begun || g == begun - 1, "committed {g}, in flight {begun}");
            if g == begun {
                report.mid_commit_landed += 1;
            }
        }
        report.final_offset = g;
    }
    report
}

/// Progress and rows as of one moment. A server-side store (Postgres) may still finish the killed
/// child's last transaction after the kill (its COMMIT was already sent), so that write can land between
/// two separate reads; the reads count only when progress did not move around the row read (#3: CI saw
/// rows of write 19 beside progress 18 when the commit landed between the two reads).
async fn consistent_read(store: &dyn ServingStore) -> (Option<SourceProgress>, Vec<MetricRow>) {
    for _ in 0..100 {
        let before = store.load_progress("crash").await.unwrap();
        let rows = store.read_range(&MetricFilter::one("crash"), t(0), t(1_000_000)).await.unwrap();
        let after = store.load_progress("crash").await.unwrap();
        if before == after {
            return (after, rows);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the committed progress kept moving after the writer was killed");
}

/// An early pane written before any watermark exists carries `EventTime::MIN`; a drained engine's rows
/// carry `EventTime::MAX`. Both read back exactly (found by the stream service benchmark on Postgres).
pub async fn extreme_watermarks_round_trip<S: ServingStore>(store: &S) {
    store.init().await.unwrap();
    let epoch = store.claim_writer("extremes").await.unwrap().writer_epoch;
    let mut early = speed_row(&key("m", 1, "/a"), 0, 3);
    early.origin = Origin::Speed { revision: 0, pane: Pane::Early, watermark: EventTime::MIN };
    let mut last = speed_row(&key("m", 2, "/b"), 1, 4);
    last.origin = Origin::Speed { revision: 1, pane: Pane::OnTime, watermark: EventTime::MAX };
    let changes = [RowChange::Upsert(early.clone()), RowChange::Upsert(last.clone())];
    store.write_provisional(&changes, &progress("extremes", epoch, 1, 10)).await.unwrap();
    let rows = store.read_range(&MetricFilter::All, EventTime::MIN, EventTime::MAX).await.unwrap();
    let origins: Vec<_> = rows.iter().map(|r| r.origin.clone()).collect();
    assert_eq!(origins, vec![early.origin, last.origin]);
}

/// The emission log: every speed firing of a committed write is recorded with it (even one precedence
/// refused), visible exactly when the write is; a replay and a fenced write record nothing.
pub async fn emissions_are_logged_with_the_write<S: ServingStore>(store: &S) {
    let read = || store.read_emissions(&MetricFilter::All, EventTime::UNIX_EPOCH, t(10_000_000));
    let epoch = store.claim_writer("emit").await.unwrap().writer_epoch;
    let (k1, k2) = (key("views", 3, "/a"), key("views", 3, "/b"));
    assert!(read().await.unwrap().is_empty());
    // one write carrying the on-time firing and a later one of the same key (only the later stays a row)
    let mut late = speed_row(&k1, 1, 8);
    late.origin = Origin::Speed { revision: 1, pane: Pane::Late, watermark: t(400) };
    late.computed_at = t(1_001);
    let mut delta = speed_row(&k2, 2, 1);
    delta.origin = Origin::Speed { revision: 2, pane: Pane::Late, watermark: t(401) };
    let changes = [
        RowChange::Upsert(speed_row(&k1, 0, 5)),
        RowChange::Upsert(late.clone()),
        RowChange::Upsert(speed_row(&k2, 0, 7)),
        RowChange::Delta(delta.clone()),
        RowChange::Retract { key: key("views", 4, "/c"), revision: 0 },
    ];
    let p1 = progress("emit", epoch, 1, 10);
    let WriteOutcome::Committed(stats) = store.write_provisional(&changes, &p1).await.unwrap() else { panic!() };
    assert_eq!(stats.applied, 4, "emission records are not counted as applied changes");
    let got = read().await.unwrap();
    let summary: Vec<(String, u32, Pane, bool, u64, i64)> = got
        .iter()
        .map(|e| {
            let n = match e.values.get("n") {
                Some(AggValue::Int(n)) => *n,
                other => panic!("{other:?}"),
            };
            (e.key.dims.encode(), e.revision, e.pane, e.delta, e.writer_epoch, n)
        })
        .collect();
    let (a, b) = (k1.dims.encode(), k2.dims.encode());
    assert_eq!(
        summary,
        vec![
            (a.clone(), 0, Pane::OnTime, false, epoch, 5),
            (a.clone(), 1, Pane::Late, false, epoch, 8),
            (b.clone(), 0, Pane::OnTime, false, epoch, 7),
            (b.clone(), 2, Pane::Late, true, epoch, 1),
        ]
    );
    assert_eq!(got[0].emitted_at, t(1_000));
    assert_eq!(got[1].emitted_at, t(1_001));
    assert_eq!(got[1].watermark, t(400));
    assert_eq!(got[0].events, 5);

    // a replay of the same write records nothing
    assert_eq!(store.write_provisional(&changes, &p1).await.unwrap(), WriteOutcome::AlreadyCommitted);
    assert_eq!(read().await.unwrap(), got);

    // a fenced writer records nothing
    let new = store.claim_writer("emit").await.unwrap().writer_epoch;
    let err = store
        .write_provisional(&[RowChange::Upsert(speed_row(&k1, 7, 70))], &progress("emit", epoch, 2, 20))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    assert_eq!(read().await.unwrap(), got);

    // the new writer re-fires revision 1 of k1 (a restart): the first record is kept; revision 2 is new
    let mut refire = late.clone();
    refire.computed_at = t(5_000);
    let mut rev2 = speed_row(&k1, 2, 9);
    rev2.computed_at = t(5_001);
    store
        .write_provisional(&[RowChange::Upsert(refire), RowChange::Upsert(rev2)], &progress("emit", new, 1, 30))
        .await
        .unwrap();
    let after = read().await.unwrap();
    assert_eq!(after.len(), 5);
    assert_eq!(after[1], got[1], "the first record of a revision is kept");
    assert_eq!((after[2].revision, after[2].writer_epoch, after[2].emitted_at), (2, new, t(5_001)));
    // range and metric filters
    let only = store.read_emissions(&MetricFilter::one("other"), EventTime::UNIX_EPOCH, t(10_000_000)).await.unwrap();
    assert!(only.is_empty());
    let none = store.read_emissions(&MetricFilter::All, t(4 * 60), t(10_000_000)).await.unwrap();
    assert!(none.is_empty());
}

/// Issue 19: the columnar scans return what the row reads return, per metric and range: current rows only
/// (no tombstones, no deltas), across date partitions; every emission record the log holds.
pub async fn scans_equal_the_reads<S: ServingStore>(store: &S) {
    use futures::TryStreamExt as _;
    let epoch = store.claim_writer("scan").await.unwrap().writer_epoch;
    // minutes around the first midnight (1440), two metrics, a late delta, a later deletion
    let mut changes = Vec::new();
    for minute in [1437, 1438, 1439, 1440, 1441] {
        for page in ["/a", "/b"] {
            changes.push(RowChange::Upsert(speed_row(&key("views", minute, page), 0, minute - 1400)));
            changes.push(RowChange::Upsert(speed_row(&key("other", minute, page), 0, 3)));
        }
    }
    let mut delta = speed_row(&key("views", 1439, "/a"), 1, 1);
    delta.origin = Origin::Speed { revision: 1, pane: Pane::Late, watermark: t(1441 * 60) };
    changes.push(RowChange::Delta(delta));
    store.write_provisional(&changes, &progress("scan", epoch, 1, 10)).await.unwrap();
    let gone = key("views", 1440, "/b");
    let batch = CorrectionBatch {
        id: "scan-fix".into(),
        run_id: "run-9".into(),
        epoch: 9,
        changes: vec![
            Correction::Delete(gone.clone()),
            Correction::Upsert(batch_row(&key("views", 1441, "/a"), 9, 99)),
        ],
        audit: vec![],
    };
    store.apply_corrections(&batch).await.unwrap();
    let (from, to) = (t(1438 * 60), t(1441 * 60 + 30));
    for metric in ["views", "other"] {
        let mut scanned = Vec::new();
        let mut chunks = store.scan_rows(metric, from, to);
        while let Some(c) = chunks.try_next().await.unwrap() {
            for i in 0..c.len() {
                let row = c.row(i).unwrap();
                assert_eq!(row, c.rows(&[i]).unwrap()[0]);
                // the text the reconciler compares with the batch view's: one canonical encoding
                assert_eq!(c.values_json(i), serde_json::to_string(&row.values).unwrap());
                assert_eq!(c.window_end(i), row.key.window.end().as_micros());
            }
            let all: Vec<usize> = (0..c.len()).collect();
            scanned.extend(c.rows(&all).unwrap());
        }
        scanned.sort_by(|a, b| a.key.cmp(&b.key));
        let mut read = store.read_range(&MetricFilter::one(metric), from, to).await.unwrap();
        read.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(scanned, read, "{metric}");
        assert_eq!(read.len(), if metric == "views" { 7 } else { 8 }, "4 minutes x 2 pages, one deleted in views");
        assert!(read.iter().all(|r| r.key != gone));
        let mut emitted = Vec::new();
        let mut chunks = store.scan_emissions(metric, from, to);
        while let Some(c) = chunks.try_next().await.unwrap() {
            for i in 0..c.len() {
                emitted.push((
                    c.window_start(i),
                    c.window_end(i),
                    c.values_json(i).to_owned(),
                    c.watermark(i),
                    c.dims(i).to_owned(),
                    c.revision(i),
                    c.delta(i),
                    format!("{:?}", c.pane(i)),
                    c.writer_epoch(i),
                ));
            }
        }
        emitted.sort();
        emitted.dedup();
        let mut logged: Vec<_> = store
            .read_emissions(&MetricFilter::one(metric), from, to)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.key.window.start().as_micros(),
                    e.key.window.end().as_micros(),
                    serde_json::to_string(&e.values).unwrap(),
                    e.watermark,
                    e.key.dims.encode(),
                    e.revision,
                    e.delta,
                    format!("{:?}", Some(e.pane)),
                    e.writer_epoch,
                )
            })
            .collect();
        logged.sort();
        assert_eq!(emitted, logged, "{metric}");
        assert_eq!(logged.len(), if metric == "views" { 9 } else { 8 }, "views also has the delta's firing");
    }
}
