//! Reading a metric frame row by row with tidemark-core's finishing rules (`Accumulator::finish`):
//! integer sums joined from their exact halves in `i128` (an `i64` if it fits, else the nearest `f64`),
//! means as that sum over the count, empty min/max as null.

use polars::prelude::*;
use tidemark_core::{AggValue, CompiledMetric, Dimensions, EventSchema, EventTime, ValueType, Window};

use super::{Component, EVENTS, HALF, WINDOW_END, WINDOW_START, component_of};
use crate::error::Error;
use crate::frame;

enum Reader {
    Count,
    IntSum(Int64Chunked, Int64Chunked),
    IntMean(Int64Chunked, Int64Chunked),
    FloatSum(Float64Chunked),
    FloatMean(Float64Chunked),
    Int(Int64Chunked),
    Float(Float64Chunked),
}

/// A metric frame (from [`super::metric_frame`]) with its columns resolved, read row by row.
pub struct FrameRows {
    starts: Int64Chunked,
    ends: Int64Chunked,
    events: Int64Chunked,
    /// (dimension name, column), sorted by name: the canonical order.
    dims: Vec<(String, StringChunked)>,
    /// (aggregate name, reader), sorted by name.
    values: Vec<(String, Reader)>,
    height: usize,
}

impl std::fmt::Debug for FrameRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameRows").field("rows", &self.height).finish_non_exhaustive()
    }
}

fn missing(what: &str, row: usize) -> Error {
    Error::Internal(format!("null {what} in row {row} of the plan's result"))
}

impl FrameRows {
    /// Resolves the columns of `metric`'s frame.
    pub fn new(df: &DataFrame, schema: &EventSchema, metric: &CompiledMetric) -> Result<Self, Error> {
        let mut df = df.clone();
        df.rechunk_mut();
        let i64c = |name: &str| -> Result<Int64Chunked, Error> {
            Ok(df.column(name)?.as_materialized_series().i64()?.clone())
        };
        let f64c = |name: &str| -> Result<Float64Chunked, Error> {
            Ok(df.column(name)?.as_materialized_series().f64()?.clone())
        };
        let mut dims = metric
            .dims
            .iter()
            .map(|(name, i)| {
                Ok((name.clone(), df.column(&frame::dim_column(*i))?.as_materialized_series().str()?.clone()))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        dims.sort_by(|a, b| a.0.cmp(&b.0));
        let mut values = Vec::with_capacity(metric.aggregates.len());
        for (j, a) in metric.aggregates.iter().enumerate() {
            let name = format!("a{j}");
            let halves = || -> Result<(Int64Chunked, Int64Chunked), Error> {
                Ok((i64c(&format!("a{j}_hi"))?, i64c(&format!("a{j}_lo"))?))
            };
            let reader = match component_of(schema, a.function, a.input)? {
                Component::Count => Reader::Count,
                Component::IntSum => {
                    let (hi, lo) = halves()?;
                    Reader::IntSum(hi, lo)
                }
                Component::IntMean => {
                    let (hi, lo) = halves()?;
                    Reader::IntMean(hi, lo)
                }
                Component::FloatSum => Reader::FloatSum(f64c(&name)?),
                Component::FloatMean => Reader::FloatMean(f64c(&name)?),
                Component::Extreme(ValueType::Int) | Component::Distinct => Reader::Int(i64c(&name)?),
                Component::Extreme(ValueType::Float) => Reader::Float(f64c(&name)?),
            };
            values.push((a.name.clone(), reader));
        }
        values.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(FrameRows {
            starts: i64c(WINDOW_START)?,
            ends: i64c(WINDOW_END)?,
            events: i64c(EVENTS)?,
            dims,
            values,
            height: df.height(),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.height
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.height == 0
    }

    /// The window of row `r`.
    pub fn window(&self, r: usize) -> Result<Window, Error> {
        let start = self.starts.get(r).ok_or_else(|| missing(WINDOW_START, r))?;
        let end = self.ends.get(r).ok_or_else(|| missing(WINDOW_END, r))?;
        EventTime::from_micros(start)
            .zip(EventTime::from_micros(end))
            .and_then(|(s, e)| Window::new(s, e))
            .ok_or_else(|| Error::Internal(format!("bad window [{start}, {end}) in the plan's result")))
    }

    /// The number of events of row `r`.
    pub fn events(&self, r: usize) -> Result<i64, Error> {
        self.events.get(r).ok_or_else(|| missing(EVENTS, r))
    }

    /// The dimensions of row `r`.
    pub fn dimensions(&self, r: usize) -> Dimensions {
        Dimensions::new(self.dims.iter().map(|(n, c)| (n.clone(), c.get(r).unwrap_or_default().to_owned())))
    }

    /// Appends the canonical dimension key of row `r` (equal to `Dimensions::encode`) to `out`.
    pub fn encode_dimensions(&self, r: usize, out: &mut String) {
        for (i, (name, c)) in self.dims.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            tidemark_core::dims::escape_into(c.get(r).unwrap_or_default(), out);
        }
    }

    /// The finished values of row `r`, sorted by aggregate name.
    pub fn values(&self, r: usize) -> Result<Vec<(&str, AggValue)>, Error> {
        let n = self.events(r)?;
        let exact = |hi: &Int64Chunked, lo: &Int64Chunked| -> Result<i128, Error> {
            let hi = hi.get(r).ok_or_else(|| missing("sum", r))?;
            let lo = lo.get(r).ok_or_else(|| missing("sum", r))?;
            Ok(i128::from(hi) * i128::from(HALF) + i128::from(lo))
        };
        let mut out = Vec::with_capacity(self.values.len());
        for (name, reader) in &self.values {
            let v = match reader {
                Reader::Count => AggValue::Int(n),
                Reader::IntSum(hi, lo) => {
                    let s = exact(hi, lo)?;
                    i64::try_from(s).map_or(AggValue::Float(s as f64), AggValue::Int)
                }
                Reader::IntMean(hi, lo) => {
                    let s = exact(hi, lo)?;
                    let sum = i64::try_from(s).map_or(s as f64, |i| i as f64);
                    AggValue::Float(sum / n as f64)
                }
                Reader::FloatSum(c) => AggValue::Float(c.get(r).ok_or_else(|| missing("sum", r))?),
                Reader::FloatMean(c) => AggValue::Float(c.get(r).ok_or_else(|| missing("mean", r))? / n as f64),
                Reader::Int(c) => c.get(r).map_or(AggValue::Null, AggValue::Int),
                Reader::Float(c) => c.get(r).map_or(AggValue::Null, AggValue::Float),
            };
            out.push((name.as_str(), v));
        }
        Ok(out)
    }
}
