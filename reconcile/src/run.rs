//! One reconcile run over `[from, to)`: read the batch view and the serving store, diff, gather evidence,
//! explain, plan and apply one idempotent correction batch, and compute the contract report.
//!
//! ```no_run
//! # async fn f(spec: &tidemark_core::ValidSpec, from: tidemark_core::EventTime, to: tidemark_core::EventTime)
//! # -> Result<(), tidemark_reconcile::Error> {
//! let outcome = tidemark_reconcile::Reconcile::new(spec, from, to).dry_run(false).report_dir("report").run().await?;
//! println!("{} differences, contract breached: {}", outcome.differences, outcome.contract.breached);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tidemark_core::{EventTime, RowKey, ValidSpec};
use tidemark_store::{ApplyOutcome, BatchView, Correction, CorrectionBatch, RunManifest, ServingStore};

use crate::contract::{ContractInput, ContractReport, contract_report};
use crate::corrections::{BlastRadius, plan_corrections};
use crate::diff::{Diff, Verdict};
use crate::error::Error;
use crate::evidence::{self, EvidenceSummary};
use crate::explain::{Cause, Explained, explain};
use crate::html::{ChartPoint, ReportPage, render};
use crate::lateness::LatenessReport;
use crate::scan::{Scanned, scan};

/// A reconcile run, configured as a builder and executed with [`Reconcile::run`].
#[derive(Debug, Clone)]
pub struct Reconcile<'a> {
    spec: &'a ValidSpec,
    from: EventTime,
    to: EventTime,
    dry_run: bool,
    report_dir: Option<PathBuf>,
}

/// What happened to the correction batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// Applied by this run.
    Now,
    /// A batch with the same id was applied before (a retry of the same plan): nothing changed.
    Already,
    /// Dry run: nothing was written.
    DryRun,
    /// The serving store already equals the batch view (or only not-yet-final windows differ).
    NothingToDo,
}

/// The result of a run (also the body of `report.json`, which adds the explained differences).
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileOutcome {
    /// Pipeline name.
    pub pipeline: String,
    /// Range start (windows starting at or after it).
    pub from: EventTime,
    /// Range end (exclusive).
    pub to: EventTime,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Keys compared (union of both sides).
    pub checked: u64,
    /// Keys that differ (every verdict but `ok`).
    pub differences: u64,
    /// Keys per verdict (including `ok`).
    pub verdicts: BTreeMap<Verdict, u64>,
    /// Differences per cause.
    pub causes: BTreeMap<Cause, u64>,
    /// Per metric: rows the corrections insert, update, delete.
    pub blast_radius: BTreeMap<String, BlastRadius>,
    /// Differing keys left alone because their window is not final in the speed layer yet.
    pub skipped_not_final: u64,
    /// The batch run(s) the truth comes from (newest last).
    pub batch_runs: Vec<String>,
    /// The epoch corrections are written with (the newest batch run's).
    pub batch_epoch: i64,
    /// The correction batch id (derived from the pipeline, range, batch run and the changes); `None` when
    /// there is nothing to correct.
    pub correction_batch: Option<String>,
    /// What happened to the correction batch.
    pub applied: Applied,
    /// Corrections in the batch (rows upserted or deleted).
    pub corrections: u64,
    /// Corrections that took effect in the store now (0 unless `applied` is `now`).
    pub corrections_applied: u64,
    /// The evidence used.
    pub evidence: EvidenceSummary,
    /// The contract report.
    pub contract: ContractReport,
    /// Where report.json was written.
    pub report_json: Option<PathBuf>,
    /// Where report.html was written.
    pub report_html: Option<PathBuf>,
    /// Where every explained difference was written (`differences.parquet`, see [`crate::read_differences`]).
    pub differences_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct ReportFile<'a> {
    #[serde(flatten)]
    outcome: &'a ReconcileOutcome,
    /// At most this many differences of each (metric, cause) are in `explained`.
    sample_per_cause: usize,
    /// A sample of the explained differences (all of them are in `differences_file`).
    explained: &'a [&'a Explained],
}

impl<'a> Reconcile<'a> {
    /// A run over windows starting in `[from, to)` of every metric of `spec`, with the stores the spec names.
    pub fn new(spec: &'a ValidSpec, from: EventTime, to: EventTime) -> Self {
        Reconcile { spec, from, to, dry_run: false, report_dir: None }
    }

    /// Plan only: change nothing, report the blast radius.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// Write `report.json` and `report.html` into `dir` (created if missing).
    pub fn report_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.report_dir = Some(dir.into());
        self
    }

    /// Runs the reconciliation: the steps of docs/reconcile.md, one call each.
    pub async fn run(self) -> Result<ReconcileOutcome, Error> {
        let spec = self.spec;
        let (from, to) = (self.from, self.to);
        if from >= to {
            return Err(Error::InvalidRange { from, to });
        }
        let clock = Clock::start();
        // 1-2. both sides, compared partition by partition
        let Sides { serving, mut scanned, batch_runs, epoch } = self.read_sides().await?;
        clock.lap("read and compare both sides");
        let serving = &*serving;
        // the differences move into their explanations, the fix rows into the correction batch: at 10M
        // events a day each is hundreds of MB, so nothing below holds two copies
        let differences = std::mem::take(&mut scanned.diff.differences);
        let fix_rows = std::mem::take(&mut scanned.fix_rows);
        let scanned = &scanned;
        let d = &scanned.diff;
        // 3. evidence, and a cause for every difference
        let stream = evidence::stream_after(spec, serving, scanned, to).await?;
        clock.lap("read the emission log after the range");
        let gathered = evidence::gather(
            spec,
            serving,
            &scanned.sessions,
            scanned.serving_watermark,
            &stream,
            from,
            to,
            self.report_dir.is_some(),
        )
        .await?;
        let n_differences = differences.len() as u64;
        let explained = explain(spec, differences, scanned.batch_session_keys.iter(), &gathered.evidence);
        clock.lap("gather evidence and explain");
        // 4. plan
        let newest_run = batch_runs.last().cloned().unwrap_or_default();
        let mut plan = plan_corrections(spec, (from, to), &explained, fix_rows, &newest_run, epoch);
        clock.lap("plan corrections");
        // 5. apply
        let (applied, corrections_applied) = self.apply(serving, &plan.batch).await?;
        clock.lap("apply corrections");
        let corrected =
            on_stream_clock(corrected_at(serving, &plan.batch, applied).await?, gathered.summary.stream_clock);
        // the batch's rows and audit lines are not needed past this point: free them before the report
        let n_changes = plan.batch.changes.len() as u64;
        plan.batch.changes = Vec::new();
        plan.batch.audit = Vec::new();
        // 6. contract report, outcome and report files
        let late_in_batch = late_events_of_batch_keys(spec, &gathered.evidence.late_events, scanned);
        let contract = contract_report(ContractInput {
            spec,
            tallies: &scanned.tallies,
            diff: d,
            first_emitted: &scanned.first_emitted,
            corrections: &corrected,
            late_events: &late_in_batch,
        });
        drop(corrected);
        clock.lap("contract report");
        let mut outcome = ReconcileOutcome {
            pipeline: spec.spec().name.clone(),
            from,
            to,
            dry_run: self.dry_run,
            checked: d.checked(),
            differences: n_differences,
            verdicts: verdict_counts(d),
            causes: cause_counts(&explained),
            blast_radius: plan.blast_radius.into_iter().collect(),
            skipped_not_final: plan.skipped_not_final.len() as u64,
            batch_runs,
            batch_epoch: epoch,
            correction_batch: (n_changes > 0).then(|| plan.batch.id.clone()),
            applied,
            corrections: n_changes,
            corrections_applied,
            evidence: gathered.summary,
            contract,
            report_json: None,
            report_html: None,
            differences_file: None,
        };
        if let Some(dir) = &self.report_dir {
            write_report(dir, spec, &mut outcome, &explained, &scanned.chart, gathered.lateness.as_ref())?;
            clock.lap("write the report");
        }
        Ok(outcome)
    }

    /// Steps 1-2: opens the stores (a real run creates or migrates the serving store's tables), reads and
    /// compares the batch view and the serving store partition by partition, and finds the batch runs the
    /// truth comes from.
    async fn read_sides(&self) -> Result<Sides, Error> {
        let spec = self.spec;
        let (from, to) = (self.from, self.to);
        let stores = &spec.spec().stores;
        let serving: Arc<dyn ServingStore> = tidemark_store::open(&spec.serving_store()).await?.into();
        if !self.dry_run {
            // creates or migrates the tables (e.g. the emission log of an older deployment); a dry run
            // changes nothing and needs an initialized store (`tidemark store init`)
            serving.init().await?;
        }
        // one version of the view for every unit and pass of the scan (a batch run may commit meanwhile)
        let view = BatchView::open(&stores.batch_view)?.pinned().await?;
        let scanned = scan(spec, serving.clone(), &view, from, to).await?;
        let (batch_runs, epoch) =
            batch_runs(&view.runs().await?, &scanned.batch_origins, scanned.batch_rows, from, to)?;
        Ok(Sides { serving, scanned, batch_runs, epoch })
    }

    /// Step 5: applies the correction batch, unless this is a dry run or it is empty.
    async fn apply(&self, serving: &dyn ServingStore, batch: &CorrectionBatch) -> Result<(Applied, u64), Error> {
        let n_changes = batch.changes.len() as u64;
        fail::fail_point!("reconcile.after_read_before_merge", |_| Err(Error::Internal(
            "fail point reconcile.after_read_before_merge".into()
        )));
        Ok(if n_changes == 0 {
            (Applied::NothingToDo, 0)
        } else if self.dry_run {
            (Applied::DryRun, 0)
        } else {
            match serving.apply_corrections(batch).await? {
                ApplyOutcome::Applied(stats) => (Applied::Now, stats.applied),
                ApplyOutcome::AlreadyApplied => (Applied::Already, 0),
            }
        })
    }
}

/// Logs (at debug level) the time each step of a run took.
pub(crate) struct Clock(std::cell::Cell<std::time::Instant>);

impl Clock {
    pub(crate) fn start() -> Self {
        Clock(std::cell::Cell::new(std::time::Instant::now()))
    }

    /// Logs the time since the previous lap (or the start) as `step`'s.
    pub(crate) fn lap(&self, step: &str) {
        let now = std::time::Instant::now();
        let took = now.duration_since(self.0.replace(now));
        tracing::debug!(step, ms = took.as_millis() as u64, "reconcile step done");
    }
}

/// The two sides of a run and where the truth comes from (step 1).
struct Sides {
    serving: Arc<dyn ServingStore>,
    /// What the comparison of the range found.
    scanned: Scanned,
    /// The batch run(s) the truth comes from, oldest first.
    batch_runs: Vec<String>,
    /// The epoch corrections are written with.
    epoch: i64,
}

/// When each key of an applied (now or before) correction batch was corrected: the batch's recorded
/// application time (one per batch), for every key it changes.
async fn corrected_at(
    serving: &dyn ServingStore,
    batch: &CorrectionBatch,
    applied: Applied,
) -> Result<Vec<(RowKey, EventTime)>, Error> {
    Ok(match applied {
        Applied::Now | Applied::Already => match serving.corrections_applied_at(&batch.id).await? {
            Some(at) => batch
                .changes
                .iter()
                .map(|c| match c {
                    Correction::Upsert(row) => (row.key.clone(), at),
                    Correction::Delete(key) => (key.clone(), at),
                })
                .collect(),
            None => Vec::new(),
        },
        Applied::DryRun | Applied::NothingToDo => Vec::new(),
    })
}

/// Correction times on the speed layer's clock: each at the earlier of its wall-clock time and `clock`, the
/// stream's last archived arrival (see `MetricContract::correction_latency`).
fn on_stream_clock(corrected: Vec<(RowKey, EventTime)>, clock: Option<EventTime>) -> Vec<(RowKey, EventTime)> {
    match clock {
        Some(c) => corrected.into_iter().map(|(k, at)| (k, at.min(c))).collect(),
        None => corrected,
    }
}

/// The late events of keys the batch view holds (the contract's late-event share is of batch windows): a
/// late event's fixed windows are batch windows; a session it missed may be one the batch never had.
fn late_events_of_batch_keys(spec: &ValidSpec, late: &HashMap<RowKey, u64>, scanned: &Scanned) -> HashMap<RowKey, u64> {
    let sessions: std::collections::HashSet<&RowKey> = scanned.batch_session_keys.iter().collect();
    late.iter()
        .filter(|(k, _)| {
            let is_session = spec
                .metric(&k.metric)
                .is_some_and(|m| matches!(m.window, tidemark_core::window::WindowSpec::Session(_)));
            !is_session || sessions.contains(k)
        })
        .map(|(k, n)| (k.clone(), *n))
        .collect()
}

/// Keys per verdict over all metrics.
fn verdict_counts(d: &Diff) -> BTreeMap<Verdict, u64> {
    let mut verdicts: BTreeMap<Verdict, u64> = BTreeMap::new();
    for m in d.metrics.values() {
        for (v, n) in &m.verdicts {
            *verdicts.entry(*v).or_default() += n;
        }
    }
    verdicts
}

/// Differences per cause.
fn cause_counts(explained: &[Explained]) -> BTreeMap<Cause, u64> {
    let mut causes: BTreeMap<Cause, u64> = BTreeMap::new();
    for e in explained {
        *causes.entry(e.cause).or_default() += 1;
    }
    causes
}

/// Differences of each (metric, cause) that `report.json` lists; all of them go to `differences.parquet`.
const REPORT_SAMPLE: usize = 20;

/// Step 6: writes `report.json` (the outcome and a sample of each cause's differences),
/// `differences.parquet` (every explained difference, one row each) and `report.html` into `dir` (created if missing),
/// and records their paths in `outcome`.
fn write_report(
    dir: &Path,
    spec: &ValidSpec,
    outcome: &mut ReconcileOutcome,
    explained: &[Explained],
    chart: &BTreeMap<String, BTreeMap<i64, ChartPoint>>,
    lateness: Option<&LatenessReport>,
) -> Result<(), Error> {
    let (from, to) = (outcome.from, outcome.to);
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let (json_path, html_path, all_path) =
        (dir.join("report.json"), dir.join("report.html"), dir.join("differences.parquet"));
    outcome.report_json = Some(json_path.clone());
    outcome.report_html = Some(html_path.clone());
    outcome.differences_file = Some(all_path.clone());
    let title = format!("{} — reconcile {from} .. {to}", spec.spec().name);
    let html = render(ReportPage { spec, title: &title, contract: &outcome.contract, explained, chart, lateness });
    let mut per_cause: HashMap<(&str, Cause), usize> = HashMap::new();
    let sample: Vec<&Explained> = explained
        .iter()
        .filter(|e| {
            let n = per_cause.entry((e.diff.key.metric.as_str(), e.cause)).or_default();
            *n += 1;
            *n <= REPORT_SAMPLE
        })
        .collect();
    let json = serde_json::to_vec_pretty(&ReportFile { outcome, sample_per_cause: REPORT_SAMPLE, explained: &sample })
        .map_err(|e| Error::Internal(format!("serializing the report: {e}")))?;
    std::fs::write(&json_path, json).map_err(|source| Error::Io { path: json_path.clone(), source })?;
    crate::differences_file::write(&all_path, explained)?;
    std::fs::write(&html_path, html).map_err(|source| Error::Io { path: html_path.clone(), source })?;
    Ok(())
}

/// The batch runs whose rows make the truth of `[from, to)`, oldest first, and the epoch to correct with.
/// Refuses a range no batch run covers: an empty batch view would otherwise delete every serving row.
fn batch_runs(
    manifests: &[RunManifest],
    batch_origins: &BTreeSet<(String, i64)>,
    batch_rows: u64,
    from: EventTime,
    to: EventTime,
) -> Result<(Vec<String>, i64), Error> {
    let mut runs: Vec<&RunManifest> =
        manifests.iter().filter(|m| !m.dry_run && m.from < to && from < m.to && m.view_version.is_some()).collect();
    runs.sort_by_key(|m| m.epoch);
    // do the recorded runs cover the whole range?
    let mut spans: Vec<(EventTime, EventTime)> = runs.iter().map(|m| (m.from, m.to)).collect();
    spans.sort();
    let mut reached = from;
    for (a, b) in spans {
        if a <= reached && b > reached {
            reached = b;
        }
    }
    let mut ids: Vec<String> = runs.iter().map(|m| m.run_id.clone()).collect();
    let mut epoch = runs.iter().map(|m| m.epoch).max();
    // rows of runs without a manifest (written by other tools) still carry their run
    for (run_id, e) in batch_origins {
        if !ids.contains(run_id) {
            ids.push(run_id.clone());
            epoch = Some(epoch.map_or(*e, |x| x.max(*e)));
        }
    }
    if reached < to && batch_rows == 0 {
        return Err(Error::NoBatchRun { from, to });
    }
    Ok((ids, epoch.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> EventTime {
        EventTime::from_secs(secs).unwrap()
    }

    fn manifest(id: &str, epoch: i64, from: i64, to: i64) -> RunManifest {
        RunManifest { run_id: id.into(), epoch, dry_run: false, from: t(from), to: t(to), view_version: Some(0) }
    }

    #[test]
    fn corrections_are_timed_on_the_stream_clock() {
        let key = |m: &str| RowKey {
            metric: m.into(),
            window: tidemark_core::Window::new(t(0), t(60)).unwrap(),
            dims: tidemark_core::Dimensions::default(),
        };
        // replayed history: the stream's clock stopped at its last recorded arrival, long before now
        let corrected = vec![(key("a"), t(1_000_000)), (key("b"), t(50))];
        assert_eq!(
            on_stream_clock(corrected.clone(), Some(t(100))),
            vec![(key("a"), t(100)), (key("b"), t(50))],
            "the earlier of the two clocks"
        );
        assert_eq!(on_stream_clock(corrected.clone(), None), corrected, "no archive: wall clock");
    }

    #[test]
    fn a_range_needs_batch_truth() {
        let none = BTreeSet::new();
        let runs = [manifest("b", 2, 0, 100), manifest("a", 1, 0, 50), manifest("c", 3, 200, 300)];
        assert_eq!(batch_runs(&runs, &none, 0, t(10), t(90)).unwrap(), (vec!["a".into(), "b".into()], 2));
        // runs covering the range jointly
        let split = [manifest("x", 1, 0, 50), manifest("y", 2, 50, 100)];
        assert_eq!(batch_runs(&split, &none, 0, t(0), t(100)).unwrap().1, 2);
        // no run covers [100, 200) and the view has no rows there: refused
        assert!(matches!(batch_runs(&runs, &none, 0, t(100), t(200)), Err(Error::NoBatchRun { .. })));
        // a dry run is not a run
        let dry = [RunManifest { dry_run: true, ..manifest("d", 9, 0, 100) }];
        assert!(matches!(batch_runs(&dry, &none, 0, t(0), t(100)), Err(Error::NoBatchRun { .. })));
        // rows written by a run without a manifest still count
        let other = BTreeSet::from([("other".to_owned(), 7)]);
        assert_eq!(batch_runs(&runs, &other, 1, t(100), t(200)).unwrap(), (vec!["other".into()], 7));
    }
}
