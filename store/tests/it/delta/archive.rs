//! The raw event archive (`RawArchive`) on real Delta tables in a temp folder.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use futures::TryStreamExt;

use tidemark_core::{Actor, EventTime, SourceCoordinates};
use tidemark_store::archive_app_id;
use tidemark_store::{AppendOutcome, ArchiveRow, Error, RawArchive};

/// 2026-11-23T23:59:00Z.
const T0: i64 = 1_795_478_340_000_000;
const MINUTE: i64 = 60_000_000;

fn url(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

fn row(source: &str, partition: i32, offset: i64, ingest_us: i64) -> ArchiveRow {
    let id = format!("{source}-{partition}-{offset}");
    ArchiveRow {
        payload: serde_json::json!({ "id": id, "ts": ingest_us - 1_000, "page": "/a&b \"q\" é", "i": offset })
            .to_string(),
        event_id: id,
        event_time: EventTime::from_micros(ingest_us - 1_000).unwrap(),
        ingest_time: EventTime::from_micros(ingest_us).unwrap(),
        coords: SourceCoordinates { source: source.to_owned(), partition, offset },
    }
}

/// Rows of `(source, partition)` at the given offsets, received one second apart from `T0 - 10 min`.
fn rows(source: &str, partition: i32, offsets: impl IntoIterator<Item = i64>) -> Vec<ArchiveRow> {
    offsets.into_iter().map(|o| row(source, partition, o, T0 - 10 * MINUTE + o * 1_000_000)).collect()
}

fn sorted(mut rows: Vec<ArchiveRow>) -> Vec<ArchiveRow> {
    rows.sort_by(|a, b| a.coords.cmp(&b.coords));
    rows
}

async fn table_version(archive: &RawArchive) -> Option<u64> {
    deltalake::open_table(archive.table_url().clone()).await.unwrap().version()
}

async fn recorded_txn(archive: &RawArchive, source: &str, partition: i32) -> Option<i64> {
    let table = deltalake::open_table(archive.table_url().clone()).await.unwrap();
    table
        .snapshot()
        .unwrap()
        .transaction_version(table.log_store().as_ref(), archive_app_id(source, partition))
        .await
        .unwrap()
}

#[tokio::test]
async fn archived_rows_read_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let archive = RawArchive::open(url(dir.path())).await.unwrap();
    assert_eq!(archive.read_all().await.unwrap(), vec![]);
    assert_eq!(archive.recorded_offsets().await.unwrap(), BTreeMap::new());
    // gaps (records that did not decode), a file source with `/` and spaces, partitions interleaved
    let mut input = rows("clicks", 0, [0, 1, 2, 5, 9]);
    input.extend(rows("/data/replay 1.jsonl", 0, [0, 1, 2]));
    input.insert(2, row("clicks", 1, 7, T0));
    let out = archive.append(&input).await.unwrap();
    assert_eq!(out, AppendOutcome { written: 9, skipped: 0 });
    assert_eq!(archive.read_all().await.unwrap(), sorted(input.clone()));
    let expected = BTreeMap::from([
        (("/data/replay 1.jsonl".to_owned(), 0), 2),
        (("clicks".to_owned(), 0), 9),
        (("clicks".to_owned(), 1), 7),
    ]);
    assert_eq!(archive.recorded_offsets().await.unwrap(), expected);
    assert_eq!(archive.recorded_offset("clicks", 0).await.unwrap(), Some(9));
    assert_eq!(archive.recorded_offset("clicks", 2).await.unwrap(), None);
    // another process sees the same
    let other = RawArchive::open(url(dir.path())).await.unwrap();
    assert_eq!(other.read_all().await.unwrap(), sorted(input));
    assert_eq!(other.recorded_offsets().await.unwrap(), expected);
}

#[tokio::test]
async fn replaying_an_overlapping_range_writes_only_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let archive = RawArchive::open(url(dir.path())).await.unwrap();
    let first = rows("clicks", 0, (0..10).filter(|o| o % 3 != 1));
    assert_eq!(archive.append(&first).await.unwrap(), AppendOutcome { written: 7, skipped: 0 });
    let version = table_version(&archive).await;

    // a crash after the commit, then a replay of 5..20 (with the same gaps)
    let replay = rows("clicks", 0, (5..20).filter(|o| o % 3 != 1));
    let out = archive.append(&replay).await.unwrap();
    assert_eq!(out, AppendOutcome { written: 6, skipped: 4 }, "5, 6, 8, 9 were archived already");
    assert_eq!(table_version(&archive).await, version.map(|v| v + 1));
    let all = archive.read_all().await.unwrap();
    let offsets: Vec<i64> = all.iter().map(|r| r.coords.offset).collect();
    assert_eq!(offsets, (0..20).filter(|o| o % 3 != 1).collect::<Vec<_>>(), "each offset exactly once");
    assert_eq!(archive.recorded_offsets().await.unwrap(), BTreeMap::from([(("clicks".to_owned(), 0), 18)]));
    assert_eq!(recorded_txn(&archive, "clicks", 0).await, Some(18));

    // a fresh handle (a restarted service, nothing cached) replaying everything writes nothing, commits nothing
    let restarted = RawArchive::open(url(dir.path())).await.unwrap();
    let version = table_version(&archive).await;
    let mut everything = first.clone();
    everything.extend(replay.into_iter().filter(|r| r.coords.offset > 9));
    assert_eq!(restarted.append(&everything).await.unwrap(), AppendOutcome { written: 0, skipped: 13 });
    assert_eq!(restarted.append(&[]).await.unwrap(), AppendOutcome::default());
    assert_eq!(table_version(&archive).await, version, "no commit when everything is skipped");
    assert_eq!(restarted.stats().commits.load(Ordering::Relaxed), 0);
    assert_eq!(restarted.read_all().await.unwrap(), all);
}

#[tokio::test]
async fn two_partitions_in_one_call_are_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let archive = RawArchive::open(url(dir.path())).await.unwrap();
    let before = table_version(&archive).await;
    assert_eq!(before, Some(0), "opening creates the table");
    let mut input = rows("clicks", 0, 0..50);
    input.extend(rows("clicks", 3, 100..130));
    assert_eq!(archive.append(&input).await.unwrap(), AppendOutcome { written: 80, skipped: 0 });
    assert_eq!(table_version(&archive).await, Some(1), "one commit for both partitions");
    assert_eq!(archive.stats().commits.load(Ordering::Relaxed), 1);
    assert_eq!(recorded_txn(&archive, "clicks", 0).await, Some(49));
    assert_eq!(recorded_txn(&archive, "clicks", 3).await, Some(129));
    assert_eq!(recorded_txn(&archive, "clicks", 1).await, None);
    // the commit says what it recorded
    let table = deltalake::open_table(archive.table_url().clone()).await.unwrap();
    let history: Vec<_> = table.history(Some(1)).try_collect().await.unwrap();
    let meta = &history[0].info["tidemark_archive"];
    assert_eq!(meta["rows"], 80);
    assert_eq!(meta["partitions"][1], serde_json::json!({ "source": "clicks", "partition": 3, "offset": 129 }));
}

#[tokio::test]
async fn rows_of_two_ingest_dates_land_in_two_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let archive = RawArchive::open(url(dir.path())).await.unwrap();
    // received across midnight UTC (T0 is 23:59)
    let input: Vec<ArchiveRow> = (0..6).map(|o| row("clicks", 0, o, T0 + o * 20_000_000)).collect();
    archive.append(&input).await.unwrap();
    let mut dates: Vec<(String, usize)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ingest_date="))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_dir(e.path()).unwrap().count()))
        .collect();
    dates.sort();
    assert_eq!(dates, vec![("ingest_date=2026-11-23".to_owned(), 1), ("ingest_date=2026-11-24".to_owned(), 1)]);
    // and the log says so too
    let table = deltalake::open_table(archive.table_url().clone()).await.unwrap();
    let mut parts: Vec<(String, i64)> = table
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| {
            let date = f.partition_values_map().get("ingest_date").cloned().flatten().unwrap().to_string();
            let rows =
                serde_json::from_str::<serde_json::Value>(&f.stats().unwrap()).unwrap()["numRecords"].as_i64().unwrap();
            (date, rows)
        })
        .collect();
    parts.sort();
    assert_eq!(parts, vec![("2026-11-23".to_owned(), 3), ("2026-11-24".to_owned(), 3)]);
    assert_eq!(archive.read_all().await.unwrap(), input);
}

/// A handle's cached offsets must not survive other writers' commits to the same partition, even when
/// its own next commit (of another partition) raced past them without a conflict.
#[tokio::test]
async fn another_writer_s_commits_are_never_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let a = RawArchive::open(url(dir.path())).await.unwrap();
    let b = RawArchive::open(url(dir.path())).await.unwrap();
    a.append(&rows("clicks", 0, 0..10)).await.unwrap();
    // b (a newer instance owning partition 0 after a rebalance) writes 10..20
    assert_eq!(b.append(&rows("clicks", 0, 5..20)).await.unwrap(), AppendOutcome { written: 10, skipped: 5 });
    // a writes another partition: its snapshot is behind, the commit lands after b's
    assert_eq!(a.append(&rows("clicks", 1, 0..5)).await.unwrap().written, 5);
    // a, a zombie for partition 0, replays 10..20: all archived already
    assert_eq!(a.append(&rows("clicks", 0, 10..25)).await.unwrap(), AppendOutcome { written: 5, skipped: 10 });
    // a stale handle whose commit conflicts with b's on the same partition reloads and skips
    let c = RawArchive::open(url(dir.path())).await.unwrap();
    assert_eq!(c.recorded_offset("clicks", 0).await.unwrap(), Some(24));
    b.append(&rows("clicks", 0, 25..30)).await.unwrap();
    assert_eq!(c.append(&rows("clicks", 0, 20..32)).await.unwrap(), AppendOutcome { written: 2, skipped: 10 });
    assert!(c.stats().conflicts.load(Ordering::Relaxed) >= 1, "{:?}", c.stats());
    let offsets: Vec<(i32, i64)> =
        a.read_all().await.unwrap().iter().map(|r| (r.coords.partition, r.coords.offset)).collect();
    let expected: Vec<(i32, i64)> = (0..32).map(|o| (0, o)).chain((0..5).map(|o| (1, o))).collect();
    assert_eq!(offsets, expected);
    assert_eq!(
        a.recorded_offsets().await.unwrap(),
        BTreeMap::from([(("clicks".to_owned(), 0), 31), (("clicks".to_owned(), 1), 4)])
    );
}

/// Two writers racing over the same partitions, each going forward without gaps from offset 0 in its own
/// chunks: every offset lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_archive_each_offset_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = RawArchive::open(url(dir.path())).await.unwrap();
    let b = RawArchive::open(url(dir.path())).await.unwrap();
    let run = |archive: RawArchive, step: i64, len: i64, calls: i64| async move {
        let mut written = 0;
        for k in 0..calls {
            let lo = k * step;
            let mut input = rows("clicks", 0, lo..lo + len);
            input.extend(rows("clicks", 1, lo..lo + len - 5));
            written += archive.append(&input).await.unwrap().written;
        }
        (written, archive)
    };
    let (ra, rb) = tokio::join!(tokio::spawn(run(a, 10, 15, 12)), tokio::spawn(run(b, 7, 13, 17)));
    let ((wa, a), (wb, b)) = (ra.unwrap(), rb.unwrap());
    let all = a.read_all().await.unwrap();
    let mut expected: Vec<(i32, i64)> = (0..125).map(|o| (0, o)).collect();
    expected.extend((0..120).map(|o| (1, o)));
    assert_eq!(all.iter().map(|r| (r.coords.partition, r.coords.offset)).collect::<Vec<_>>(), expected);
    assert_eq!(wa + wb, expected.len() as u64);
    let conflicts = a.stats().conflicts.load(Ordering::Relaxed) + b.stats().conflicts.load(Ordering::Relaxed);
    println!("racing writers: {wa} + {wb} rows, {conflicts} conflicts");
}

#[tokio::test]
async fn malformed_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let archive = RawArchive::open(url(dir.path())).await.unwrap();
    let mut input = rows("clicks", 0, [3, 4]);
    input.extend(rows("clicks", 0, [4]));
    let err = archive.append(&input).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert_eq!((err.actor(), err.retryable()), (Actor::User, false));
    assert!(err.to_string().contains("clicks[0]@4 follows offset 4"), "{err}");
    assert!(matches!(archive.append(&rows("clicks", 0, [-1])).await, Err(Error::InvalidInput { .. })));
    assert_eq!(table_version(&archive).await, Some(0));
    assert!(matches!(RawArchive::open("not a url").await, Err(Error::InvalidInput { .. })));
}

#[tokio::test]
async fn memory_urls_and_plain_paths_work() {
    let mem = RawArchive::open("memory:///tidemark-archive-test").await.unwrap();
    let input = rows("clicks", 0, 0..3);
    assert_eq!(mem.append(&input).await.unwrap().written, 3);
    assert_eq!(mem.append(&input).await.unwrap().skipped, 3);
    assert_eq!(mem.read_all().await.unwrap(), input);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw");
    let plain = RawArchive::open(path.display().to_string()).await.unwrap();
    assert_eq!(plain.append(&input).await.unwrap().written, 3);
    assert!(path.join("_delta_log").is_dir());
}

const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2026-11-23T00:00:00Z.
const DAY0: i64 = 1_795_392_000_000_000;

/// An event of `id` at `event_us`, received a second later, at `(source, partition, offset)`.
fn event(id: &str, event_us: i64, partition: i32, offset: i64) -> ArchiveRow {
    ArchiveRow {
        payload: serde_json::json!({ "id": id, "ts": event_us }).to_string(),
        event_id: id.to_owned(),
        event_time: EventTime::from_micros(event_us).unwrap(),
        ingest_time: EventTime::from_micros(event_us + 1_000_000).unwrap(),
        coords: SourceCoordinates { source: "clicks".to_owned(), partition, offset },
    }
}

/// Three days of 100 events each (every 12 minutes from 01:00), one append (one file) per day; each day
/// holds one event id delivered twice (partition 1 redelivers it), and day 0's last event is redelivered
/// on day 1 with its day-0 event time.
async fn three_days(archive: &RawArchive) -> Vec<Vec<ArchiveRow>> {
    let mut days = Vec::new();
    let mut offset = 0;
    for d in 0..3i64 {
        let mut rows: Vec<ArchiveRow> = (0..100)
            .map(|i| {
                offset += 1;
                event(&format!("d{d}-{i}"), DAY0 + d * DAY + HOUR + i * 12 * MINUTE, 0, offset)
            })
            .collect();
        rows.push(event(&format!("d{d}-7"), DAY0 + d * DAY + HOUR + 7 * 12 * MINUTE, 1, 100 * d));
        if d == 1 {
            // received on day 1, so it lands in day 1's partition (and file)
            let mut again = event("d0-99", DAY0 + HOUR + 99 * 12 * MINUTE, 1, 100 * d + 1);
            again.ingest_time = EventTime::from_micros(DAY0 + DAY + 2 * HOUR).unwrap();
            rows.push(again);
        }
        assert_eq!(archive.append(&rows).await.unwrap().written, rows.len() as u64);
        days.push(rows);
    }
    days
}

/// Issue 19: a range read opens only the files whose event-time statistics overlap the range (the archive's
/// Delta statistics hold `event_time`), decodes only their narrow columns, and reads payloads only of ids
/// delivered twice within the range.
#[tokio::test]
async fn issue_19_a_range_read_skips_the_files_of_other_days() {
    let dir = tempfile::tempdir().unwrap();
    let archive = RawArchive::open(url(dir.path())).await.unwrap();
    let days = three_days(&archive).await;
    let (from, to) = (EventTime::from_micros(DAY0 + DAY).unwrap(), EventTime::from_micros(DAY0 + 2 * DAY).unwrap());

    let read = archive.read_range(from, to).arrivals(from, to).duplicates(true).run().await.unwrap();
    assert_eq!(read.stats.files_in_table, 3);
    assert_eq!(read.stats.files_read, 1, "only day 1's file: {:?}", read.stats);
    // day 1's file: its 101 events plus the redelivery of day 0's last event (outside the range)
    assert_eq!(read.stats.rows_read, 102);
    assert_eq!(read.stats.rows_in_range, 101);
    assert_eq!(read.arrivals.len(), 101);
    assert_eq!(read.sources, vec!["clicks".to_owned()]);
    let a = read.arrivals.iter().find(|a| a.partition == 1 && a.offset == 100).unwrap();
    assert_eq!(a.event_time, days[1][100].event_time);
    assert_eq!(a.ingest_time, days[1][100].ingest_time);
    // the duplicate inside the range, with both deliveries; day 0's redelivered id is outside the range
    let mut expected = vec![days[1][7].clone(), days[1][100].clone()];
    expected.sort_by(|a, b| a.coords.cmp(&b.coords));
    assert_eq!(read.duplicates, vec![expected]);
    assert_eq!((read.stats.payload_files_read, read.stats.payload_rows_read), (1, 2));

    // arrivals of a sub-range, without duplicates (no event ids read)
    let noon = EventTime::from_micros(DAY0 + DAY + 12 * HOUR).unwrap();
    let read = archive.read_range(from, to).arrivals(from, noon).run().await.unwrap();
    assert!(read.duplicates.is_empty());
    assert_eq!(read.arrivals.len(), 56, "01:00 + 12 min steps before noon: 55, and the redelivered d1-7");
    assert_eq!(read.stats.payload_rows_read, 0);

    // a range over two days reads both files; day 0's id redelivered on day 1 is now a duplicate
    let read = archive.read_range(EventTime::from_micros(DAY0).unwrap(), to).duplicates(true).run().await.unwrap();
    assert_eq!(read.stats.files_read, 2);
    let ids: Vec<&str> = read.duplicates.iter().map(|d| d[0].event_id.as_str()).collect();
    assert_eq!(ids, vec!["d0-7", "d0-99", "d1-7"]);
    // an empty range reads nothing
    let read = archive.read_range(to, to).duplicates(true).run().await.unwrap();
    assert_eq!(read.stats, tidemark_store::RangeReadStats::default());
}

/// Issue 19: the archive's latest arrival (the speed layer's clock as of its last archived record) comes
/// from the file statistics; an empty archive has none.
#[tokio::test]
async fn issue_19_the_latest_arrival_is_read_from_the_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let archive = RawArchive::open(url(dir.path())).await.unwrap();
    assert_eq!(archive.latest_arrival().await.unwrap(), None);
    let days = three_days(&archive).await;
    let latest = days.iter().flatten().map(|r| r.ingest_time).max().unwrap();
    assert_eq!(latest, days[2][99].ingest_time, "day 2's last event");
    // a second handle sees the same (the statistics are in the Delta log)
    let other = RawArchive::open(url(dir.path())).await.unwrap();
    assert_eq!(other.latest_arrival().await.unwrap(), Some(latest));
}
