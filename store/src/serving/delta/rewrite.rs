//! Copy-on-write apply of a write's records, the same result as the MERGE of `merge.rs` without a query
//! engine's join: the partitions (metric, date, hour, kind) the records fall in are read file by file; a
//! stored record whose key a record of the write matches is replaced when the write's record wins
//! ([`Flat::wins_over_stored`], the MERGE's precedence predicate); the write's unmatched records are
//! appended; and one commit removes the files of every partition that changed and adds their rewritten
//! files. Memory holds a partition at a time (its rewritten file is buffered compressed), and partitions run
//! as many at once as there are cores.
//!
//! Conflicts: the commit is a `MERGE` operation whose read predicate names the touched partitions, so Delta's
//! conflict checker refuses it when a concurrent commit removed a file it read or added a file to a
//! partition it read; the caller re-plans on the new version, as with the MERGE.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use deltalake::arrow::compute::{cast, interleave_record_batch, take_record_batch};
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::logstore::ObjectStoreRef;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{DeltaTable, DeltaTableError};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjPath;

use super::PARTITIONS;
use super::schema::{KEY_COLUMNS, WINDOW_HOUR, arrow_schema, delta_revision_column, kind_str, to_batch};
use crate::delta_io::{longs, strings, times};
use crate::flat::{self, Flat, Kind};

/// A partition of the serving table: metric, window date, window hour, kind.
type Part = (String, String, String, String);

/// Rows per batch read from a stored file.
const READ_BATCH_ROWS: usize = 16_384;

/// Whether `table` has the layout this path rewrites (a new table's [`PARTITIONS`], no deletion vectors);
/// older layouts use the MERGE.
pub(super) fn supported(table: &DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| {
        s.metadata().partition_columns().iter().map(String::as_str).eq(PARTITIONS)
            && s.log_data().iter().all(|f| f.deletion_vector_descriptor().is_none())
    })
}

fn generic(e: impl std::fmt::Display) -> DeltaTableError {
    DeltaTableError::Generic(e.to_string())
}

/// Applies `flats` to `table` in one commit with `props` (see the module doc). Returns the table after the
/// commit and the records inserted or replaced; when nothing changes, no commit is made and the table is
/// returned as it was.
pub(super) async fn rewrite(
    table: DeltaTable,
    flats: &[Flat],
    emission_tag: i64,
    props: CommitProperties,
) -> Result<(DeltaTable, u64), DeltaTableError> {
    let mut parts: BTreeMap<Part, Vec<Flat>> = BTreeMap::new();
    for f in flats {
        let part = (f.metric.clone(), f.window_date(), f.window_hour(), kind_str(f.kind).to_owned());
        parts.entry(part).or_default().push(f.clone());
    }
    let snapshot = table.snapshot()?;
    let mut files: HashMap<Part, Vec<(ObjPath, Action)>> = HashMap::new();
    for f in snapshot.log_data().iter() {
        let values = f.partition_values_map();
        let value = |c: &str| values.get(c).cloned().flatten().unwrap_or_default();
        let part = (value("metric"), value("window_date"), value(WINDOW_HOUR), value("kind"));
        if parts.contains_key(&part) {
            files.entry(part).or_default().push((f.object_store_path(), Action::Remove(f.remove_action(true))));
        }
    }
    let (num_indexed_cols, stats_columns) =
        deltalake::operations::get_num_idx_cols_and_stats_columns(Some(snapshot.table_config()), HashMap::new());
    let config = WriterConfig::new(
        arrow_schema(true),
        PARTITIONS.iter().map(|c| (*c).to_owned()).collect(),
        None,
        Some(snapshot.table_config().target_file_size()),
        None,
        num_indexed_cols,
        stats_columns,
    );
    let predicate = read_predicate(parts.keys());
    let store = table.object_store();
    let lanes = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let tasks = parts.into_iter().map(|(part, sources)| {
        let stored = files.remove(&part).unwrap_or_default();
        let (store, config) = (store.clone(), config.clone());
        async move {
            tokio::spawn(rewrite_part(store, config, part, sources, stored, emission_tag))
                .await
                .map_err(|e| generic(format!("the task rewriting a partition failed: {e}")))?
        }
    });
    let started = std::time::Instant::now();
    let outcomes: Vec<PartOutcome> = futures::stream::iter(tasks).buffered(lanes).try_collect().await?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, partitions = outcomes.len(), "partitions rewritten");
    let applied: u64 = outcomes.iter().map(|o| o.applied).sum();
    let actions: Vec<Action> = outcomes.into_iter().flat_map(|o| o.actions).collect();
    if actions.is_empty() {
        return Ok((table, 0));
    }
    let operation = DeltaOperation::Merge {
        predicate: Some(predicate),
        merge_predicate: Some(KEY_COLUMNS.join(", ")),
        matched_predicates: vec![],
        not_matched_predicates: vec![],
        not_matched_by_source_predicates: vec![],
    };
    CommitBuilder::from(props).with_actions(actions).build(Some(snapshot), table.log_store(), operation).await?;
    let mut t = table.clone();
    t.update_state().await?;
    Ok((t, applied))
}

/// The partitions read, as SQL over the partition columns (the conflict checker's read predicate).
fn read_predicate<'a>(parts: impl Iterator<Item = &'a Part>) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    // (metric, kind) -> (dates, hours)
    type Read<'p> = (BTreeSet<&'p str>, BTreeSet<&'p str>);
    let mut by_metric_kind: BTreeMap<(&str, &str), Read<'_>> = BTreeMap::new();
    for (metric, date, hour, kind) in parts {
        let e = by_metric_kind.entry((metric, kind)).or_default();
        e.0.insert(date);
        e.1.insert(hour);
    }
    let list = |s: &BTreeSet<&str>| s.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ");
    by_metric_kind
        .iter()
        .map(|((metric, kind), (dates, hours))| {
            format!(
                "(metric = {} AND kind = {} AND window_date IN ({}) AND {WINDOW_HOUR} IN ({}))",
                q(metric),
                q(kind),
                list(dates),
                list(hours)
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// What the rewrite of one partition did: its remove and add actions (none when nothing changed) and the
/// records it inserted or replaced.
struct PartOutcome {
    actions: Vec<Action>,
    applied: u64,
}

/// Rewrites one partition: its `stored` files with the `sources` records applied.
async fn rewrite_part(
    store: ObjectStoreRef,
    config: WriterConfig,
    part: Part,
    sources: Vec<Flat>,
    stored: Vec<(ObjPath, Action)>,
    emission_tag: i64,
) -> Result<PartOutcome, DeltaTableError> {
    let source_batch = to_batch(&sources, emission_tag, true).map_err(generic)?;
    let index: HashMap<(i64, i64, &str, i64), usize> = sources
        .iter()
        .enumerate()
        .map(|(j, f)| ((f.window_start, f.window_end, f.dims.as_str(), delta_revision_column(f, emission_tag)), j))
        .collect();
    let mut matched = vec![false; sources.len()];
    let mut replaced = 0u64;
    let config_for_inserts = config.clone();
    let mut writer = DeltaWriter::new(store.clone(), config);
    let schema = arrow_schema(true);
    let mut removes = Vec::with_capacity(stored.len());
    // emission records carry the write's own version in their key, so they match nothing stored: appended
    // without reading the partition
    let stored = if sources.iter().all(|f| matches!(f.kind, Kind::Emission { .. })) { Vec::new() } else { stored };
    for (path, remove) in stored {
        removes.push(remove);
        let bytes = store.get(&path).await?.bytes().await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.with_batch_size(READ_BATCH_ROWS).build()?;
        for b in reader {
            let b = with_partition_columns(&b?, &schema, &part)?;
            let (ws, we, dims, drev) = (
                times(&b, "window_start").map_err(generic)?,
                times(&b, "window_end").map_err(generic)?,
                strings(&b, "dims").map_err(generic)?,
                longs(&b, "delta_revision").map_err(generic)?,
            );
            let (layer, epoch, revision) = (
                strings(&b, "layer").map_err(generic)?,
                longs(&b, "batch_epoch").map_err(generic)?,
                longs(&b, "revision").map_err(generic)?,
            );
            let opt = |a: &deltalake::arrow::array::Int64Array, i: usize| a.is_valid(i).then(|| a.value(i));
            let mut picks: Vec<(usize, usize)> = Vec::with_capacity(b.num_rows());
            let mut changed = false;
            for i in 0..b.num_rows() {
                let key = (ws.value(i), we.value(i), dims.value(i), drev.value(i));
                let pick = match index.get(&key) {
                    Some(&j) => {
                        matched[j] = true;
                        let stored_layer = flat::parse_layer(layer.value(i))
                            .ok_or_else(|| generic(format!("serving table: bad layer {:?}", layer.value(i))))?;
                        if sources[j].wins_over_stored(stored_layer, opt(&epoch, i), opt(&revision, i)) {
                            replaced += 1;
                            changed = true;
                            (1, j)
                        } else {
                            (0, i)
                        }
                    }
                    None => (0, i),
                };
                picks.push(pick);
            }
            let out = if changed { interleave_record_batch(&[&b, &source_batch], &picks)? } else { b };
            writer.write(&out).await?;
        }
    }
    let inserts: Vec<u32> =
        (0..sources.len()).filter(|j| !matched[*j]).map(|j| u32::try_from(j).unwrap_or(u32::MAX)).collect();
    if replaced == 0 && inserts.is_empty() {
        writer.abort().await?;
        return Ok(PartOutcome { actions: Vec::new(), applied: 0 });
    }
    let inserted = inserts.len() as u64;
    let removes = if replaced == 0 {
        // only inserts: the stored files stay, the inserted records go to a file of their own
        writer.abort().await?;
        writer = DeltaWriter::new(store, config_for_inserts);
        Vec::new()
    } else {
        removes
    };
    if !inserts.is_empty() {
        writer.write(&take_record_batch(&source_batch, &UInt32Array::from(inserts))?).await?;
    }
    let adds = writer.close().await?;
    let actions = removes.into_iter().chain(adds.into_iter().map(Action::Add)).collect();
    Ok(PartOutcome { actions, applied: replaced + inserted })
}

/// A batch read from a data file (which holds no partition columns) with the partition's values added, in
/// `schema`'s column order and types.
fn with_partition_columns(
    b: &RecordBatch,
    schema: &Arc<deltalake::arrow::datatypes::Schema>,
    part: &Part,
) -> Result<RecordBatch, DeltaTableError> {
    let n = b.num_rows();
    let constant = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match field.name().as_str() {
            "metric" => constant(&part.0),
            "window_date" => constant(&part.1),
            WINDOW_HOUR => constant(&part.2),
            "kind" => constant(&part.3),
            name => {
                let c = b.column_by_name(name).ok_or_else(|| generic(format!("serving file without column {name}")))?;
                if c.data_type() == field.data_type() { c.clone() } else { cast(c, field.data_type())? }
            }
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use tidemark_core::{EventTime, Layer};

    use super::super::merge::{Apply, Committed};
    use super::super::{DeltaStore, DeltaStoreConfig};
    use crate::MetricFilter;
    use crate::flat::{Flat, Kind};

    /// A small deterministic generator (xorshift), so a failing seed can be rerun.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    const MINUTE: i64 = 60_000_000;

    /// A record of a random key among 2 metrics x 3 hours x 4 minutes x 3 dimension values (rows, and a few
    /// delta and emission records), from a random layer, revision or epoch.
    fn record(rng: &mut Rng) -> Flat {
        let start = (rng.below(3) as i64 * 60 + rng.below(4) as i64) * MINUTE;
        let speed = rng.below(2) == 0;
        Flat {
            metric: ["a", "b"][rng.below(2) as usize].to_owned(),
            window_start: start,
            window_end: start + MINUTE,
            dims: format!("k={}", rng.below(3)),
            kind: match rng.below(8) {
                0 => Kind::Delta(rng.below(2) as u32 + 1),
                1 if speed => Kind::Emission { revision: rng.below(3) as u32, delta: false },
                _ => Kind::Row,
            },
            values_json: format!("{{\"n\":{}}}", rng.below(100)),
            events: rng.below(100) as i64,
            layer: if speed { Layer::Speed } else { Layer::Batch },
            revision: speed.then(|| rng.below(3) as i64),
            pane: speed.then_some("on_time"),
            watermark: speed.then_some(start),
            batch_run_id: (!speed).then(|| "run".to_owned()),
            batch_epoch: (!speed).then(|| rng.below(3) as i64 + 1),
            computed_at: rng.below(1_000) as i64,
            deleted: speed && rng.below(5) == 0,
        }
    }

    /// `n` records of distinct keys (a write holds one record per key).
    fn records(rng: &mut Rng, n: usize) -> Vec<Flat> {
        let mut out: Vec<Flat> = Vec::new();
        for _ in 0..n {
            let r = record(rng);
            let same = |o: &Flat| {
                (o.metric.as_str(), o.window_start, o.dims.as_str(), o.delta_revision())
                    == (r.metric.as_str(), r.window_start, r.dims.as_str(), r.delta_revision())
            };
            if !out.iter().any(same) {
                out.push(r);
            }
        }
        out
    }

    async fn store(dir: &std::path::Path) -> DeltaStore {
        let store = DeltaStoreConfig::new(format!("file://{}", dir.display())).build().await.unwrap();
        crate::ServingStore::init(&store).await.unwrap();
        store
    }

    async fn write(store: &DeltaStore, flats: &[Flat], app: &str, apply: Apply) -> u64 {
        let plan = |cur: Option<i64>| Ok(Ok(cur.unwrap_or(0) + 1));
        match store.commit(flats, 0, app, plan, serde_json::json!({}), apply).await.unwrap() {
            Committed::Done { applied, .. } => applied,
            Committed::Skipped(_) => panic!("skipped"),
        }
    }

    async fn contents(store: &DeltaStore) -> Vec<String> {
        let mut all: Vec<String> = store
            .scan_flats(&["row", "delta", "emission"], false, &MetricFilter::All, EventTime::MIN, EventTime::MAX)
            .await
            .unwrap()
            .iter()
            .map(|f| format!("{f:?}"))
            .collect();
        all.sort();
        all
    }

    /// The copy-on-write apply leaves the table and reports the count the MERGE does, over random stored
    /// records and writes (updates that win and lose by precedence, inserts, delta and emission records,
    /// several hours).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copy_on_write_equals_the_merge() {
        for seed in 1..=24u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (merged, rewritten) = (store(d1.path()).await, store(d2.path()).await);
            // the same history in both (two writes, so partitions hold several files)
            // (one app id, as a pipeline's writes: each write's version tags its emission records)
            for n in [30, 20] {
                let flats = records(&mut rng, n);
                for s in [&merged, &rewritten] {
                    write(s, &flats, "w", Apply::Merge).await;
                }
            }
            let flats = records(&mut rng, 25);
            let by_merge = write(&merged, &flats, "w", Apply::Merge).await;
            let by_rewrite = write(&rewritten, &flats, "w", Apply::CopyOnWrite).await;
            assert_eq!(contents(&merged).await, contents(&rewritten).await, "seed {seed}");
            assert_eq!(by_merge, by_rewrite, "seed {seed}: records applied");
            assert!(by_rewrite > 0, "seed {seed}: the write changed something");
        }
    }

    fn at_hour(hour: i64, dims: &str, epoch: i64) -> Flat {
        let start = hour * 60 * MINUTE;
        Flat {
            metric: "a".into(),
            window_start: start,
            window_end: start + MINUTE,
            dims: dims.into(),
            kind: Kind::Row,
            values_json: "{\"n\":1}".into(),
            events: 1,
            layer: Layer::Batch,
            revision: None,
            pane: None,
            watermark: None,
            batch_run_id: Some("run".into()),
            batch_epoch: Some(epoch),
            computed_at: 0,
            deleted: false,
        }
    }

    /// A commit that added or replaced files of a partition the rewrite read, after the rewrite's snapshot,
    /// makes the rewrite's commit conflict (the caller then re-plans); one in another partition does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_concurrent_write_to_a_partition_it_read_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        write(&s, &[at_hour(0, "k=1", 1), at_hour(1, "k=1", 1)], "setup", Apply::Merge).await;
        let props = || deltalake::kernel::transaction::CommitProperties::default();
        let conflicts = |r: Result<(deltalake::DeltaTable, u64), deltalake::DeltaTableError>| match r {
            Err(e) => crate::delta_io::is_conflict(&e),
            Ok(_) => false,
        };
        // another hour: no conflict
        let stale = s.latest(false).await.unwrap();
        write(&s, &[at_hour(1, "k=2", 1)], "other-hour", Apply::Merge).await;
        let r = super::rewrite(stale, &[at_hour(0, "k=1", 2)], 0, props()).await;
        assert!(r.as_ref().is_ok_and(|(_, applied)| *applied == 1), "{:?}", r.map(|(_, a)| a));
        // an insert (a new file) into the hour it read
        let stale = s.latest(false).await.unwrap();
        write(&s, &[at_hour(0, "k=3", 1)], "insert", Apply::Merge).await;
        assert!(
            conflicts(super::rewrite(stale, &[at_hour(0, "k=1", 3)], 0, props()).await),
            "append to a read partition"
        );
        // an update (a file removed) in the hour it read
        let stale = s.latest(false).await.unwrap();
        write(&s, &[at_hour(0, "k=3", 2)], "update", Apply::Merge).await;
        assert!(conflicts(super::rewrite(stale, &[at_hour(0, "k=1", 4)], 0, props()).await), "rewrite of a read file");
        // re-planned on the latest version, it applies
        let latest = s.latest(false).await.unwrap();
        let r = super::rewrite(latest, &[at_hour(0, "k=1", 4)], 0, props()).await;
        assert!(r.as_ref().is_ok_and(|(_, applied)| *applied == 1));
        let rows = contents(&s).await;
        assert_eq!(rows.len(), 4, "{rows:#?}");
    }
}
