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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tidemark_core::{EventTime, MetricRow, Origin, RowKey, ValidSpec};
use tidemark_store::{ApplyOutcome, BatchView, CorrectionBatch, MetricFilter, RunManifest, ServingStore};

use crate::contract::{ContractInput, ContractReport, SpeedFiring, contract_report};
use crate::corrections::{BlastRadius, plan_corrections};
use crate::diff::{Diff, Verdict, diff};
use crate::error::Error;
use crate::evidence::{self, EvidenceSummary};
use crate::explain::{Cause, Explained, explain};
use crate::html::{ReportPage, render};
use crate::lateness::{Arrival, LatenessReport, analyse};

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
}

#[derive(Serialize)]
struct ReportFile<'a> {
    #[serde(flatten)]
    outcome: &'a ReconcileOutcome,
    explained: &'a [Explained],
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
        // 1. both sides
        let sides = self.read_sides().await?;
        let (serving, batch) = (&*sides.serving, &sides.batch);
        // 2. diff
        let d = diff(spec, batch, &sides.serving_rows)?;
        // 3. evidence, and a cause for every difference
        let mut sessions = evidence::SessionIndex::new();
        for r in batch.iter().chain(&sides.serving_rows) {
            sessions.add(spec, &r.key);
        }
        let serving_watermark = sides
            .serving_rows
            .iter()
            .filter_map(|r| match r.origin {
                Origin::Speed { watermark, .. } => Some(watermark),
                Origin::Batch { .. } => None,
            })
            .max();
        let gathered = evidence::gather(spec, serving, &sessions, serving_watermark, from, to).await?;
        let explained = explain(spec, &d, batch.iter().map(|r| &r.key), &gathered.evidence);
        // 4. plan
        let newest_run = sides.batch_runs.last().cloned().unwrap_or_default();
        let plan = plan_corrections(spec, (from, to), &explained, batch, &newest_run, sides.epoch);
        // 5. apply
        let (applied, corrections_applied) = self.apply(serving, &plan.batch).await?;
        let corrected = corrected_at(serving, &plan.batch, applied).await?;
        // 6. contract report, outcome and report files
        let contract = contract_report(ContractInput {
            spec,
            batch,
            diff: &d,
            emissions: &gathered.emissions,
            corrections: &corrected,
            late_events: &gathered.evidence.late_events,
        });
        let n_changes = plan.batch.changes.len() as u64;
        let mut outcome = ReconcileOutcome {
            pipeline: spec.spec().name.clone(),
            from,
            to,
            dry_run: self.dry_run,
            checked: d.checked(),
            differences: d.differences.len() as u64,
            verdicts: verdict_counts(&d),
            causes: cause_counts(&explained),
            blast_radius: plan.blast_radius.into_iter().collect(),
            skipped_not_final: plan.skipped_not_final.len() as u64,
            batch_runs: sides.batch_runs,
            batch_epoch: sides.epoch,
            correction_batch: (n_changes > 0).then(|| plan.batch.id.clone()),
            applied,
            corrections: n_changes,
            corrections_applied,
            evidence: gathered.summary,
            contract,
            report_json: None,
            report_html: None,
        };
        if let Some(dir) = &self.report_dir {
            write_report(dir, spec, &mut outcome, &explained, batch, &gathered.emissions, &gathered.arrivals)?;
        }
        Ok(outcome)
    }

    /// Step 1: opens the stores (a real run creates or migrates the serving store's tables), reads the batch
    /// view and the serving store for the range, and finds the batch runs the truth comes from.
    async fn read_sides(&self) -> Result<Sides, Error> {
        let spec = self.spec;
        let (from, to) = (self.from, self.to);
        let stores = &spec.spec().stores;
        let serving = tidemark_store::open(&spec.serving_store()).await?;
        if !self.dry_run {
            // creates or migrates the tables (e.g. the emission log of an older deployment); a dry run
            // changes nothing and needs an initialized store (`tidemark store init`)
            serving.init().await?;
        }
        let view = BatchView::open(&stores.batch_view)?;
        let batch = view.read_range(&MetricFilter::All, from, to).await?;
        let (batch_runs, epoch) = batch_runs(&view.runs().await?, &batch, from, to)?;
        let serving_rows = serving.read_range(&MetricFilter::All, from, to).await?;
        Ok(Sides { serving, batch, serving_rows, batch_runs, epoch })
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

/// The two sides of a run and where the truth comes from (step 1).
struct Sides {
    serving: Box<dyn ServingStore>,
    /// Batch rows of the range (truth).
    batch: Vec<MetricRow>,
    /// Serving rows of the range.
    serving_rows: Vec<MetricRow>,
    /// The batch run(s) the truth comes from, oldest first.
    batch_runs: Vec<String>,
    /// The epoch corrections are written with.
    epoch: i64,
}

/// When each key of an applied (now or before) correction batch was corrected, from the audit log.
async fn corrected_at(
    serving: &dyn ServingStore,
    batch: &CorrectionBatch,
    applied: Applied,
) -> Result<Vec<(RowKey, EventTime)>, Error> {
    Ok(match applied {
        Applied::Now | Applied::Already => {
            let log = serving.audit_log(Some(&batch.id)).await?;
            let mut at: HashMap<RowKey, EventTime> = HashMap::new();
            for l in log {
                at.entry(l.entry.key).or_insert(l.applied_at);
            }
            at.into_iter().collect()
        }
        Applied::DryRun | Applied::NothingToDo => Vec::new(),
    })
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

/// Step 6: writes `report.json` and `report.html` into `dir` (created if missing) and records their paths in
/// `outcome`.
fn write_report(
    dir: &Path,
    spec: &ValidSpec,
    outcome: &mut ReconcileOutcome,
    explained: &[Explained],
    batch: &[MetricRow],
    emissions: &[SpeedFiring],
    arrivals: &[Arrival],
) -> Result<(), Error> {
    let (from, to) = (outcome.from, outcome.to);
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let (json_path, html_path) = (dir.join("report.json"), dir.join("report.html"));
    outcome.report_json = Some(json_path.clone());
    outcome.report_html = Some(html_path.clone());
    let lateness: Option<LatenessReport> = (!arrivals.is_empty()).then(|| {
        let t = &spec.spec().time;
        analyse(arrivals, t.watermark_delay, t.allowed_lateness, &[0.99, 0.999, 0.9999])
    });
    let title = format!("{} — reconcile {from} .. {to}", spec.spec().name);
    let html = render(ReportPage {
        spec,
        title: &title,
        contract: &outcome.contract,
        explained,
        batch,
        emissions,
        lateness: lateness.as_ref(),
    });
    let json = serde_json::to_vec_pretty(&ReportFile { outcome, explained })
        .map_err(|e| Error::Internal(format!("serializing the report: {e}")))?;
    std::fs::write(&json_path, json).map_err(|source| Error::Io { path: json_path.clone(), source })?;
    std::fs::write(&html_path, html).map_err(|source| Error::Io { path: html_path.clone(), source })?;
    Ok(())
}

/// The batch runs whose rows make the truth of `[from, to)`, oldest first, and the epoch to correct with.
/// Refuses a range no batch run covers: an empty batch view would otherwise delete every serving row.
fn batch_runs(
    manifests: &[RunManifest],
    batch: &[MetricRow],
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
    for r in batch {
        if let Origin::Batch { run_id, epoch: e } = &r.origin
            && !ids.contains(run_id)
        {
            ids.push(run_id.clone());
            epoch = Some(epoch.map_or(*e, |x| x.max(*e)));
        }
    }
    if reached < to && batch.is_empty() {
        return Err(Error::NoBatchRun { from, to });
    }
    Ok((ids, epoch.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tidemark_core::{Dimensions, Window};

    use super::*;

    fn t(secs: i64) -> EventTime {
        EventTime::from_secs(secs).unwrap()
    }

    fn manifest(id: &str, epoch: i64, from: i64, to: i64) -> RunManifest {
        RunManifest { run_id: id.into(), epoch, dry_run: false, from: t(from), to: t(to), view_version: Some(0) }
    }

    #[test]
    fn a_range_needs_batch_truth() {
        let runs = [manifest("b", 2, 0, 100), manifest("a", 1, 0, 50), manifest("c", 3, 200, 300)];
        assert_eq!(batch_runs(&runs, &[], t(10), t(90)).unwrap(), (vec!["a".into(), "b".into()], 2));
        // runs covering the range jointly
        let split = [manifest("x", 1, 0, 50), manifest("y", 2, 50, 100)];
        assert_eq!(batch_runs(&split, &[], t(0), t(100)).unwrap().1, 2);
        // no run covers [100, 200) and the view has no rows there: refused
        assert!(matches!(batch_runs(&runs, &[], t(100), t(200)), Err(Error::NoBatchRun { .. })));
        // a dry run is not a run
        let dry = [RunManifest { dry_run: true, ..manifest("d", 9, 0, 100) }];
        assert!(matches!(batch_runs(&dry, &[], t(0), t(100)), Err(Error::NoBatchRun { .. })));
        // rows written by a run without a manifest still count
        let row = MetricRow {
            key: RowKey {
                metric: "m".into(),
                window: Window::new(t(100), t(160)).unwrap(),
                dims: Dimensions::default(),
            },
            values: BTreeMap::new(),
            events: 1,
            origin: Origin::Batch { run_id: "other".into(), epoch: 7 },
            computed_at: t(0),
        };
        assert_eq!(batch_runs(&runs, &[row], t(100), t(200)).unwrap(), (vec!["other".into()], 7));
    }
}
