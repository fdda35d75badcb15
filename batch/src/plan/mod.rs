//! The polars plan: decoded events in, one metric's rows out.
//!
//! 1. [`dedupe_by_id`]: keep the first row of each `event_id` in frame order (with provenance columns the
//!    frame is first sorted by receive time, source, partition, offset, so the earliest received copy wins).
//! 2. Per metric, the dimension values are interned to one `u32` key id (`keys`); grouping and sorting
//!    run on (key id, window slot or time) packed into one `Int64` column when it fits.
//!    Window assignment, one file per kind: `fixed` (tumbling and hopping with core's alignment; hopping
//!    windows are merged from slide-long panes when every aggregate merges) and `session` (sort per key,
//!    a new session where the gap to the previous event is `>= gap`).
//! 3. Aggregates chosen so that the finished values equal tidemark-core's accumulators: integer sums are
//!    summed as two exact 32-bit halves and joined in `i128` (so they never wrap), means divide that exact
//!    sum by the count, `count_distinct` over floats counts `-0.0` as `0.0`. Group-bys run on polars'
//!    streaming engine (measured faster and leaner here than the in-memory one).
//! 4. [`FrameRows`] / [`rows_from_frame`] finish the values into core [`MetricRow`]s with canonical
//!    dimensions.

mod finish;
mod fixed;
mod keys;
mod session;

pub use finish::FrameRows;

use polars::prelude::*;
use tidemark_core::{
    AggregateFn, CompiledMetric, EventSchema, EventTime, InputRef, MetricRow, Origin, RowKey, ValueType, WindowSpec,
};

use crate::error::Error;
use crate::frame::{self, EVENT_ID, EVENT_TIME};

/// Output column: window start (µs).
pub const WINDOW_START: &str = "window_start";
/// Output column: window end (µs).
pub const WINDOW_END: &str = "window_end";
/// Output column: events in the row.
pub const EVENTS: &str = "__events";

pub(crate) const HALF: i64 = 1 << 32;

/// Drops every row whose `event_id` appeared earlier in the frame, after sorting by the provenance columns
/// when present (stable, so ties keep frame order). Returns the de-duplicated frame without the id and
/// provenance columns (no metric reads them) and the number of rows dropped.
pub fn dedupe_by_id(df: DataFrame) -> Result<(DataFrame, u64), Error> {
    let before = df.height();
    let has_provenance = df.schema().contains(frame::RECEIVED);
    let mut lf = df.lazy();
    if has_provenance {
        lf = lf
            .sort(
                [frame::RECEIVED, frame::SOURCE, frame::PARTITION, frame::OFFSET],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .drop(cols([frame::RECEIVED, frame::SOURCE, frame::PARTITION, frame::OFFSET]));
    }
    let out = lf
        .unique_stable_generic(Some(vec![col(EVENT_ID)]), UniqueKeepStrategy::First)
        .drop(cols([EVENT_ID]))
        .collect()?;
    let dropped = (before - out.height()) as u64;
    Ok((out, dropped))
}

/// How one aggregate is computed: the component columns it needs from the group-by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Component {
    /// `count`: the row's event count.
    Count,
    /// Exact integer sum from `a{j}_hi` and `a{j}_lo`.
    IntSum,
    /// Float sum in `a{j}`.
    FloatSum,
    /// Exact integer sum divided by the count.
    IntMean,
    /// Float sum divided by the count.
    FloatMean,
    /// Min / max in `a{j}`, of the field's type.
    Extreme(ValueType),
    /// `n_unique` in `a{j}`.
    Distinct,
}

pub(crate) fn component_of(schema: &EventSchema, function: AggregateFn, input: InputRef) -> Result<Component, Error> {
    let ty = match input {
        InputRef::Value(i) => Some(
            schema
                .values
                .get(i)
                .map(|(_, t)| *t)
                .ok_or_else(|| Error::Internal(format!("value index {i} is not in the event schema")))?,
        ),
        _ => None,
    };
    Ok(match (function, ty) {
        (AggregateFn::Count, _) => Component::Count,
        (AggregateFn::Sum, Some(ValueType::Int)) => Component::IntSum,
        (AggregateFn::Sum, Some(ValueType::Float)) => Component::FloatSum,
        (AggregateFn::Mean, Some(ValueType::Int)) => Component::IntMean,
        (AggregateFn::Mean, Some(ValueType::Float)) => Component::FloatMean,
        (AggregateFn::Min | AggregateFn::Max, Some(t)) => Component::Extreme(t),
        (AggregateFn::CountDistinct, _) => Component::Distinct,
        (f, None) => return Err(Error::Internal(format!("{} without a value field", f.as_str()))),
    })
}

fn input_column(input: InputRef) -> Option<String> {
    match input {
        InputRef::None => None,
        InputRef::Dim(i) => Some(frame::dim_column(i)),
        InputRef::Value(i) => Some(frame::value_column(i)),
    }
}

/// The aggregation of a metric: expressions over events (with the event count), and, when every
/// aggregate is mergeable (all but `count_distinct`), the expressions that merge those partial results.
pub(crate) struct Aggregation {
    /// Over events.
    pub over_events: Vec<Expr>,
    /// How to merge each output column of `over_events` across partial results, if all aggregates merge.
    pub merge: Option<Vec<(String, MergeOp)>>,
}

/// How one column of partial results merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MergeOp {
    /// Sum of Int64 (counts and exact integer halves: never overflows, see `HALF`).
    SumInt,
    /// Sum of Float64.
    SumFloat,
    /// Min of Int64.
    MinInt,
    /// Max of Int64.
    MaxInt,
    /// Min of Float64.
    MinFloat,
    /// Max of Float64.
    MaxFloat,
}

fn aggregation(schema: &EventSchema, metric: &CompiledMetric) -> Result<Aggregation, Error> {
    let mut over_events = vec![len().cast(DataType::Int64).alias(EVENTS)];
    let mut merge = Some(vec![(EVENTS.to_owned(), MergeOp::SumInt)]);
    for (j, a) in metric.aggregates.iter().enumerate() {
        let comp = component_of(schema, a.function, a.input)?;
        let Some(c) = input_column(a.input) else { continue };
        let v = col(c.as_str());
        let name = format!("a{j}");
        match comp {
            Component::Count => {}
            Component::IntSum | Component::IntMean => {
                let (hi_name, lo_name) = (format!("a{j}_hi"), format!("a{j}_lo"));
                let hi = v.clone().floor_div(lit(HALF));
                let lo = v - hi.clone() * lit(HALF);
                over_events.push(hi.sum().alias(hi_name.as_str()));
                over_events.push(lo.sum().alias(lo_name.as_str()));
                if let Some(m) = &mut merge {
                    m.push((hi_name, MergeOp::SumInt));
                    m.push((lo_name, MergeOp::SumInt));
                }
            }
            Component::FloatSum | Component::FloatMean => {
                over_events.push(v.sum().alias(name.as_str()));
                if let Some(m) = &mut merge {
                    m.push((name, MergeOp::SumFloat));
                }
            }
            Component::Extreme(ty) => {
                let min = a.function == AggregateFn::Min;
                over_events.push(if min { v.min() } else { v.max() }.alias(name.as_str()));
                if let Some(m) = &mut merge {
                    let op = match (min, ty) {
                        (true, ValueType::Int) => MergeOp::MinInt,
                        (false, ValueType::Int) => MergeOp::MaxInt,
                        (true, ValueType::Float) => MergeOp::MinFloat,
                        (false, ValueType::Float) => MergeOp::MaxFloat,
                    };
                    m.push((name, op));
                }
            }
            Component::Distinct => {
                let is_float = matches!(a.input, InputRef::Value(i) if schema.values.get(i).map(|(_, t)| *t) == Some(ValueType::Float));
                // -0.0 and 0.0 are one value (core's DistinctKey); NaN cannot occur (the decoder refuses it)
                let v = if is_float { when(v.clone().eq(lit(0.0))).then(lit(0.0)).otherwise(v) } else { v };
                over_events.push(v.n_unique().cast(DataType::Int64).alias(name.as_str()));
                merge = None;
            }
        }
    }
    Ok(Aggregation { over_events, merge })
}

/// The metric's dimension columns (in the metric's order) and every column its plan reads: the time, those
/// dimensions and the aggregates' inputs.
pub(crate) fn metric_columns(metric: &CompiledMetric) -> (Vec<String>, Vec<String>) {
    let dims: Vec<String> = metric.dims.iter().map(|(_, i)| frame::dim_column(*i)).collect();
    let mut all = vec![EVENT_TIME.to_owned()];
    for c in dims.iter().cloned().chain(metric.aggregates.iter().filter_map(|a| input_column(a.input))) {
        if !all.contains(&c) {
            all.push(c);
        }
    }
    (dims, all)
}

/// Computes one metric's rows as a frame: `window_start`, `window_end` (µs), the metric's `dim{i}` columns,
/// `__events` and the aggregate components. Only windows overlapping `[from, to)` are kept when a range is
/// given. The events must already be de-duplicated.
pub fn metric_frame(
    events: &DataFrame,
    schema: &EventSchema,
    metric: &CompiledMetric,
    range: Option<(EventTime, EventTime)>,
) -> Result<DataFrame, Error> {
    let dims: Vec<String> = metric.dims.iter().map(|(_, i)| frame::dim_column(*i)).collect();
    let mut keep = vec![EVENT_TIME.to_owned()];
    for a in &metric.aggregates {
        if let Some(c) = input_column(a.input)
            && !keep.contains(&c)
        {
            keep.push(c);
        }
    }
    let aggs = aggregation(schema, metric)?;
    // the plans group and sort by one integer key column instead of the dimension strings
    let interned = keys::intern(events, &dims, &keep)?;
    let times = interned.work.column(EVENT_TIME)?.as_materialized_series().i64()?.clone();
    let span = times.min().zip(times.max());
    let keys = interned.dictionary.height();
    let lf = interned.work.lazy();
    let out = match metric.window {
        WindowSpec::Fixed(w) => fixed::plan(lf, &w, aggs, range, keys, span)?,
        WindowSpec::Session(s) => session::plan(lf, s, aggs.over_events, range, keys, span),
    };
    // polars' streaming engine: measured faster and leaner than the in-memory engine for these group-bys
    // (see benches/plan.rs); de-duplication stays in memory, where it is faster
    // (a plan with one sink has a single result, so `unwrap_single` cannot panic)
    let out = out.collect_with_engine(Engine::Streaming)?.unwrap_single();
    Ok(keys::restore(out, &interned.dictionary)?)
}

/// Finishes a [`metric_frame`] into rows, sorted by window and dimensions.
pub fn rows_from_frame(
    df: &DataFrame,
    schema: &EventSchema,
    metric: &CompiledMetric,
    origin: &Origin,
    computed_at: EventTime,
) -> Result<Vec<MetricRow>, Error> {
    let f = FrameRows::new(df, schema, metric)?;
    let mut rows = Vec::with_capacity(f.len());
    for r in 0..f.len() {
        rows.push(MetricRow {
            key: RowKey { metric: metric.name.clone(), window: f.window(r)?, dims: f.dimensions(r) },
            values: f.values(r)?.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            events: u64::try_from(f.events(r)?).unwrap_or(0),
            origin: origin.clone(),
            computed_at,
        });
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

/// De-duplicated events in, one metric's finished rows out: [`metric_frame`] then [`rows_from_frame`].
pub fn metric_rows(
    events: &DataFrame,
    schema: &EventSchema,
    metric: &CompiledMetric,
    range: Option<(EventTime, EventTime)>,
    origin: &Origin,
    computed_at: EventTime,
) -> Result<Vec<MetricRow>, Error> {
    let df = metric_frame(events, schema, metric, range)?;
    rows_from_frame(&df, schema, metric, origin, computed_at)
}

/// The `event_time` column expression.
pub(crate) fn time() -> Expr {
    col(EVENT_TIME)
}
