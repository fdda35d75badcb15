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
use std::path::PathBuf;

use serde::Serialize;
use tidemark_core::window::WindowSpec;
use tidemark_core::{Dimensions, Duration, EventTime, MetricRow, Origin, RowKey, ValidSpec, Window};
use tidemark_store::{ApplyOutcome, BatchView, DeadLetterStore, MetricFilter, RawArchive, RunManifest};

use crate::contract::{ContractInput, ContractReport, Emission, contract_report};
use crate::corrections::{BlastRadius, plan_corrections};
use crate::diff::{Verdict, diff};
use crate::error::Error;
use crate::explain::{Cause, Evidence, Explained, explain};
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

/// What the reconciler knew besides the rows, in numbers, and what it could not know.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvidenceSummary {
    /// Late events of the range's keys: late-ledger events plus events of late-policy delta rows.
    pub late_events: u64,
    /// Of those, events the speed layer emitted as delta rows (`late_policy = "append"`).
    pub delta_events: u64,
    /// Extra deliveries of an event id (raw archive) counted into keys of the range.
    pub duplicate_deliveries: u64,
    /// A lower bound of the stream's operator watermark (the highest watermark any speed firing carried).
    pub stream_watermark: Option<EventTime>,
    /// Stream restarts seen in the emission log (new writer epochs), with the watermark before each.
    pub restarts: Vec<EventTime>,
    /// Evidence that could not be gathered, and why.
    pub unavailable: Vec<String>,
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

    /// Runs the reconciliation.
    pub async fn run(self) -> Result<ReconcileOutcome, Error> {
        let spec = self.spec;
        let (from, to) = (self.from, self.to);
        if from >= to {
            return Err(Error::InvalidRange { from, to });
        }
        let stores = &spec.spec().stores;
        let serving = tidemark_store::open(&spec.serving_store()).await?;
        if !self.dry_run {
            // creates or migrates the tables (e.g. the emission log of an older deployment); a dry run
            // changes nothing and needs an initialized store (`tidemark store init`)
            serving.init().await?;
        }
        let view = BatchView::open(&stores.batch_view)?;

        // 1. both sides
        let batch = view.read_range(&MetricFilter::All, from, to).await?;
        let (batch_runs, epoch) = batch_runs(&view.runs().await?, &batch, from, to)?;
        let serving_rows = serving.read_range(&MetricFilter::All, from, to).await?;
        let d = diff(spec, &batch, &serving_rows)?;

        // 2. evidence
        let mut summary = EvidenceSummary::default();
        // the emission log from `from` on: the range's firings for the contract, later ones for the watermark.
        // A firing of a window starting past `to + allowed lateness + 1 day` proves the watermark passed every
        // window of the range (sessions longer than a day aside), so nothing later is read.
        let horizon = to.saturating_add(spec.spec().time.allowed_lateness).saturating_add(Duration::from_secs(86_400));
        let all_emissions = serving.read_emissions(&MetricFilter::All, from, horizon).await?;
        let emissions: Vec<Emission> = all_emissions
            .iter()
            .filter(|e| e.key.window.start() < to && !e.delta)
            .map(|e| Emission {
                key: e.key.clone(),
                values: e.values.clone(),
                pane: e.pane,
                revision: e.revision,
                emitted_at: e.emitted_at,
            })
            .collect();
        let stream_watermark = all_emissions
            .iter()
            .map(|e| e.watermark)
            .chain(serving_rows.iter().filter_map(|r| match r.origin {
                Origin::Speed { watermark, .. } => Some(watermark),
                Origin::Batch { .. } => None,
            }))
            .max();
        if stream_watermark.is_none() {
            summary
                .unavailable
                .push(format!("stream watermark: no speed-layer firing of a window starting at or after {from}"));
        }
        let restarts = restart_watermarks(&all_emissions);
        summary.stream_watermark = stream_watermark;
        summary.restarts = restarts.clone();
        if all_emissions.is_empty() {
            summary.unavailable.push("restarts: the emission log holds no firing of the range".into());
        }

        let sessions = SessionIndex::new(spec, batch.iter().chain(&serving_rows));
        let late_events = match DeadLetterStore::open(&stores.dead_letter) {
            Ok(dl) => match dl.list_late().await {
                Ok(records) => late_keys(spec, &records, &sessions, from, to),
                Err(e) => {
                    summary.unavailable.push(format!("late ledger: {e}"));
                    HashMap::new()
                }
            },
            Err(e) => {
                summary.unavailable.push(format!("late ledger: {e}"));
                HashMap::new()
            }
        };
        let mut arrivals = Vec::new();
        let duplicate_deliveries = match RawArchive::open(stores.raw_archive.clone()).await {
            Ok(archive) => match archive.read_all().await {
                Ok(rows) => {
                    arrivals = rows
                        .iter()
                        .filter(|r| from <= r.event_time && r.event_time < to)
                        .map(|r| Arrival {
                            partition: r.coords.partition,
                            offset: r.coords.offset,
                            event_time: r.event_time,
                            ingest_time: r.ingest_time,
                        })
                        .collect();
                    duplicate_keys(spec, &rows, &sessions, from, to)
                }
                Err(e) => {
                    summary.unavailable.push(format!("raw archive (duplicate deliveries): {e}"));
                    HashMap::new()
                }
            },
            Err(e) => {
                summary.unavailable.push(format!("raw archive (duplicate deliveries): {e}"));
                HashMap::new()
            }
        };
        // late-policy `append`: late events within the allowed lateness reach the serving store as delta rows
        // beside the row (the row itself keeps the on-time value), so they are late-event evidence too
        let mut late_events = late_events;
        for d in serving.read_deltas(&MetricFilter::All, from, to).await? {
            summary.delta_events += d.events;
            *late_events.entry(d.key).or_default() += d.events;
        }
        summary.late_events = late_events.values().sum();
        summary.duplicate_deliveries = duplicate_deliveries.values().sum();
        let evidence = Evidence { late_events, duplicate_deliveries, stream_watermark, restart_watermarks: restarts };

        // 3. explain and plan
        let explained = explain(spec, &d, batch.iter().map(|r| &r.key), &evidence);
        let newest_run = batch_runs.last().cloned().unwrap_or_default();
        let plan = plan_corrections(spec, (from, to), &explained, &batch, &newest_run, epoch);

        // 4. apply
        let n_changes = plan.batch.changes.len() as u64;
        fail::fail_point!("reconcile.after_read_before_merge", |_| Err(Error::Internal(
            "fail point reconcile.after_read_before_merge".into()
        )));
        let (applied, corrections_applied) = if n_changes == 0 {
            (Applied::NothingToDo, 0)
        } else if self.dry_run {
            (Applied::DryRun, 0)
        } else {
            match serving.apply_corrections(&plan.batch).await? {
                ApplyOutcome::Applied(stats) => (Applied::Now, stats.applied),
                ApplyOutcome::AlreadyApplied => (Applied::Already, 0),
            }
        };
        let corrected: Vec<(RowKey, EventTime)> = match applied {
            Applied::Now | Applied::Already => {
                let log = serving.audit_log(Some(&plan.batch.id)).await?;
                let mut at: HashMap<RowKey, EventTime> = HashMap::new();
                for l in log {
                    at.entry(l.entry.key).or_insert(l.applied_at);
                }
                at.into_iter().collect()
            }
            Applied::DryRun | Applied::NothingToDo => Vec::new(),
        };

        // 5. contract
        let contract = contract_report(ContractInput {
            spec,
            batch: &batch,
            diff: &d,
            emissions: &emissions,
            corrections: &corrected,
            late_events: &evidence.late_events,
        });

        let mut verdicts: BTreeMap<Verdict, u64> = BTreeMap::new();
        for m in d.metrics.values() {
            for (v, n) in &m.verdicts {
                *verdicts.entry(*v).or_default() += n;
            }
        }
        let mut causes: BTreeMap<Cause, u64> = BTreeMap::new();
        for e in &explained {
            *causes.entry(e.cause).or_default() += 1;
        }
        let mut outcome = ReconcileOutcome {
            pipeline: spec.spec().name.clone(),
            from,
            to,
            dry_run: self.dry_run,
            checked: d.checked(),
            differences: d.differences.len() as u64,
            verdicts,
            causes,
            blast_radius: plan.blast_radius.into_iter().collect(),
            skipped_not_final: plan.skipped_not_final.len() as u64,
            batch_runs,
            batch_epoch: epoch,
            correction_batch: (n_changes > 0).then(|| plan.batch.id.clone()),
            applied,
            corrections: n_changes,
            corrections_applied,
            evidence: summary,
            contract,
            report_json: None,
            report_html: None,
        };

        // 6. report files
        if let Some(dir) = &self.report_dir {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
            let (json_path, html_path) = (dir.join("report.json"), dir.join("report.html"));
            outcome.report_json = Some(json_path.clone());
            outcome.report_html = Some(html_path.clone());
            let lateness: Option<LatenessReport> = (!arrivals.is_empty()).then(|| {
                let t = &spec.spec().time;
                analyse(&arrivals, t.watermark_delay, t.allowed_lateness, &[0.99, 0.999, 0.9999])
            });
            let title = format!("{} — reconcile {from} .. {to}", spec.spec().name);
            let html = render(ReportPage {
                spec,
                title: &title,
                contract: &outcome.contract,
                explained: &explained,
                batch: &batch,
                emissions: &emissions,
                lateness: lateness.as_ref(),
            });
            let json = serde_json::to_vec_pretty(&ReportFile { outcome: &outcome, explained: &explained })
                .map_err(|e| Error::Internal(format!("serializing the report: {e}")))?;
            std::fs::write(&json_path, json).map_err(|source| Error::Io { path: json_path.clone(), source })?;
            std::fs::write(&html_path, html).map_err(|source| Error::Io { path: html_path.clone(), source })?;
        }
        Ok(outcome)
    }
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

/// Watermarks before each restart of the stream service: for every writer epoch after the first seen in
/// the emission log, the highest watermark an earlier epoch's firing carried (the drain of a bounded input,
/// `EventTime::MAX`, and the `EventTime::MIN` of early panes tell nothing and are skipped; a restart before
/// any known watermark is not reported).
fn restart_watermarks(emissions: &[tidemark_store::Emission]) -> Vec<EventTime> {
    let mut per_epoch: BTreeMap<u64, Option<EventTime>> = BTreeMap::new();
    for e in emissions {
        let w = per_epoch.entry(e.writer_epoch).or_default();
        if EventTime::MIN < e.watermark && e.watermark < EventTime::MAX {
            *w = Some(w.map_or(e.watermark, |x| x.max(e.watermark)));
        }
    }
    let mut out = Vec::new();
    let mut before: Option<EventTime> = None;
    for (i, w) in per_epoch.values().enumerate() {
        if i > 0
            && let Some(b) = before
        {
            out.push(b);
        }
        if let Some(w) = w {
            before = Some(before.map_or(*w, |b| b.max(*w)));
        }
    }
    out
}

/// Session windows of both sides, per (metric, dimensions), to find the session an event belongs to.
struct SessionIndex<'a> {
    windows: HashMap<(&'a str, String), Vec<Window>>,
}

impl<'a> SessionIndex<'a> {
    fn new(spec: &ValidSpec, rows: impl Iterator<Item = &'a MetricRow>) -> Self {
        let mut windows: HashMap<(&'a str, String), Vec<Window>> = HashMap::new();
        for r in rows {
            if spec.metric(&r.key.metric).is_some_and(|m| matches!(m.window, WindowSpec::Session(_))) {
                windows.entry((r.key.metric.as_str(), r.key.dims.encode())).or_default().push(r.key.window);
            }
        }
        SessionIndex { windows }
    }

    fn containing(&self, metric: &str, dims: &Dimensions, t: EventTime) -> Vec<Window> {
        self.windows
            .get(&(metric, dims.encode()))
            .map(|ws| ws.iter().filter(|w| w.start() <= t && t < w.end()).copied().collect())
            .unwrap_or_default()
    }
}

/// Every key (of windows starting in `[from, to)`) a decoded event counts into.
fn keys_of(
    spec: &ValidSpec,
    event: &tidemark_core::Event,
    sessions: &SessionIndex<'_>,
    from: EventTime,
    to: EventTime,
) -> Vec<RowKey> {
    let mut out = Vec::new();
    for m in spec.metrics() {
        let dims = m.dimensions_of(event);
        let windows: Vec<Window> = match &m.window {
            WindowSpec::Fixed(f) => f.assign(event.time).collect(),
            WindowSpec::Session(_) => sessions.containing(&m.name, &dims, event.time),
        };
        for w in windows.into_iter().filter(|w| from <= w.start() && w.start() < to) {
            out.push(RowKey { metric: m.name.clone(), window: w, dims: dims.clone() });
        }
    }
    out
}

/// Late-ledger events per key of the range. A record lists the windows it missed (`missed`: metric,
/// window_start, window_end, dimensions); a record without that list is decoded from its payload with the
/// spec's schema and assigned to windows with core.
fn late_keys(
    spec: &ValidSpec,
    records: &[tidemark_store::LateRecord],
    sessions: &SessionIndex<'_>,
    from: EventTime,
    to: EventTime,
) -> HashMap<RowKey, u64> {
    let mut out: HashMap<RowKey, u64> = HashMap::new();
    for r in records {
        let mut keys = Vec::new();
        if let Some(missed) = r.body.get("missed").and_then(|m| m.as_array()) {
            for m in missed {
                let s = |k: &str| m.get(k).and_then(|v| v.as_str());
                let time = |k: &str| s(k).and_then(|v| v.parse::<EventTime>().ok());
                let (Some(metric), Some(start), Some(end), Some(dims)) =
                    (s("metric"), time("window_start"), time("window_end"), s("dimensions"))
                else {
                    continue;
                };
                let (Some(window), Ok(dims)) = (Window::new(start, end), Dimensions::decode(dims)) else { continue };
                if from <= window.start() && window.start() < to {
                    keys.push(RowKey { metric: metric.to_owned(), window, dims });
                }
            }
        } else if let Some(payload) = r.body.get("payload").and_then(|p| p.as_str())
            && let Ok(event) = spec.schema().decode(payload.as_bytes(), EventTime::MAX)
        {
            keys = keys_of(spec, &event, sessions, from, to);
        }
        keys.sort();
        keys.dedup();
        for k in keys {
            *out.entry(k).or_default() += 1;
        }
    }
    out
}

/// Extra deliveries per key: archived events whose id was delivered more than once (different source
/// coordinates), decoded with the spec's schema and assigned to windows with core.
fn duplicate_keys(
    spec: &ValidSpec,
    rows: &[tidemark_store::ArchiveRow],
    sessions: &SessionIndex<'_>,
    from: EventTime,
    to: EventTime,
) -> HashMap<RowKey, u64> {
    let mut by_id: HashMap<&str, Vec<&tidemark_store::ArchiveRow>> = HashMap::new();
    for r in rows {
        by_id.entry(r.event_id.as_str()).or_default().push(r);
    }
    let mut out: HashMap<RowKey, u64> = HashMap::new();
    for deliveries in by_id.values().filter(|d| d.len() > 1) {
        let first = deliveries[0];
        let Ok(event) = spec.schema().decode(first.payload.as_bytes(), first.ingest_time) else { continue };
        for k in keys_of(spec, &event, sessions, from, to) {
            *out.entry(k).or_default() += deliveries.len() as u64 - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tidemark_core::{Pane, Window};

    use super::*;

    fn t(secs: i64) -> EventTime {
        EventTime::from_secs(secs).unwrap()
    }

    fn emission(epoch: u64, watermark: EventTime) -> tidemark_store::Emission {
        tidemark_store::Emission {
            key: RowKey { metric: "m".into(), window: Window::new(t(0), t(60)).unwrap(), dims: Dimensions::default() },
            values: BTreeMap::new(),
            events: 1,
            pane: Pane::OnTime,
            revision: 0,
            delta: false,
            watermark,
            writer_epoch: epoch,
            emitted_at: t(100),
        }
    }

    #[test]
    fn restarts_are_new_writer_epochs_with_the_watermark_before_them() {
        let log = [
            emission(3, t(40)),
            emission(1, t(10)),
            emission(1, t(20)),
            emission(2, t(30)),
            emission(2, EventTime::MAX),
            emission(2, EventTime::MIN),
        ];
        assert_eq!(restart_watermarks(&log), vec![t(20), t(30)]);
        assert!(restart_watermarks(&log[1..3]).is_empty(), "one epoch: no restart");
        // a restart before any known watermark is not reported
        assert!(restart_watermarks(&[emission(1, EventTime::MAX), emission(2, t(5))]).is_empty());
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
