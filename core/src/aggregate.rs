//! Mergeable accumulators, one per aggregate function.
//!
//! Every accumulator has an empty state, `add` for one value, `merge` for another accumulator's state and
//! `finish` for the result. Merging is associative and commutative, so any split of the events into parts,
//! merged in any order, gives the result of adding them all at once:
//! - counts (`count`, `count_distinct`) are `u64` and exact;
//! - `sum` over an integer field accumulates in `i128` and is exact while the result fits in `i64`
//!   (beyond that it finishes as the nearest `f64`);
//! - `min` and `max` are exact for both integer and float fields;
//! - `sum` and `mean` over float fields use compensated (Neumaier) summation; the result can still depend
//!   on the order of additions in the last bits, so their default tolerance is `rel(1e-9)`;
//! - `mean` is always a float: exact integer sum divided by the count.
//!
//! The stream engine uses these accumulators; the batch layer's polars plan is tested against them.
//! Accumulators are serde values (the engine checkpoints them as they are); serializing is deterministic.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The aggregate functions a metric can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFn {
    /// Number of events.
    Count,
    /// Sum of a value field.
    Sum,
    /// Smallest value of a value field.
    Min,
    /// Largest value of a value field.
    Max,
    /// Arithmetic mean of a value field.
    Mean,
    /// Exact number of distinct values of a field (dimension or value).
    CountDistinct,
}

impl AggregateFn {
    /// The name used in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateFn::Count => "count",
            AggregateFn::Sum => "sum",
            AggregateFn::Min => "min",
            AggregateFn::Max => "max",
            AggregateFn::Mean => "mean",
            AggregateFn::CountDistinct => "count_distinct",
        }
    }

    /// Whether the function needs a numeric value field.
    pub fn needs_numeric_field(self) -> bool {
        matches!(self, AggregateFn::Sum | AggregateFn::Min | AggregateFn::Max | AggregateFn::Mean)
    }
}

/// A numeric field value of an event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Num {
    /// From an `int` field.
    Int(i64),
    /// From a `float` field (never NaN or infinite: the decoder refuses those).
    Float(f64),
}

impl Num {
    /// As `f64` (integers above 2^53 round).
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// A numeric value whose distinct occurrences `count_distinct` counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DistinctKey {
    /// An integer value.
    Int(i64),
    /// A float value, by its bits (`-0.0` is counted as `0.0`).
    Float(u64),
}

impl DistinctKey {
    /// The key of a numeric value.
    pub fn from_num(n: Num) -> Self {
        match n {
            Num::Int(i) => DistinctKey::Int(i),
            Num::Float(f) => DistinctKey::Float(if f == 0.0 { 0.0f64.to_bits() } else { f.to_bits() }),
        }
    }
}

/// A finished aggregate value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AggValue {
    /// Counts, integer sums, integer min/max.
    Int(i64),
    /// Float sums, float min/max, means.
    Float(f64),
    /// No value (an aggregate over no events).
    Null,
}

impl AggValue {
    /// As `f64`, `None` for null.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            AggValue::Int(i) => Some(i as f64),
            AggValue::Float(f) => Some(f),
            AggValue::Null => None,
        }
    }
}

impl fmt::Display for AggValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggValue::Int(i) => write!(f, "{i}"),
            AggValue::Float(x) => write!(f, "{x}"),
            AggValue::Null => f.write_str("null"),
        }
    }
}

/// Neumaier-compensated float sum; merging adds both parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    /// Adds one value.
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    /// Adds another compensated sum.
    pub fn merge(&mut self, other: &CompensatedSum) {
        self.add(other.sum);
        self.add(other.compensation);
    }

    /// The sum.
    pub fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// The sum state of integer and float inputs kept apart, so integer sums stay exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct SumState {
    ints: i128,
    floats: CompensatedSum,
    saw_float: bool,
}

impl SumState {
    fn add(&mut self, n: Num) {
        match n {
            Num::Int(i) => self.ints += i128::from(i),
            Num::Float(f) => {
                self.floats.add(f);
                self.saw_float = true;
            }
        }
    }

    fn merge(&mut self, o: &SumState) {
        self.ints += o.ints;
        self.floats.merge(&o.floats);
        self.saw_float |= o.saw_float;
    }

    fn finish(&self) -> AggValue {
        if self.saw_float {
            let mut s = self.floats;
            s.add(self.ints as f64);
            AggValue::Float(s.value())
        } else {
            match i64::try_from(self.ints) {
                Ok(i) => AggValue::Int(i),
                Err(_) => AggValue::Float(self.ints as f64),
            }
        }
    }
}

fn num_cmp(a: Num, b: Num) -> std::cmp::Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        _ => a.as_f64().total_cmp(&b.as_f64()),
    }
}

fn num_value(n: Option<Num>) -> AggValue {
    match n {
        Some(Num::Int(i)) => AggValue::Int(i),
        Some(Num::Float(f)) => AggValue::Float(f),
        None => AggValue::Null,
    }
}

/// The running state of one aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Accumulator {
    /// `count`.
    Count(u64),
    /// `sum`.
    Sum(SumAcc),
    /// `min`.
    Min(Option<Num>),
    /// `max`.
    Max(Option<Num>),
    /// `mean`.
    Mean(MeanAcc),
    /// `count_distinct` (boxed: the sets are large and the other states small).
    CountDistinct(Box<DistinctSet>),
}

/// The exact set of distinct values seen by `count_distinct`. Serialized as two sorted lists, so equal
/// sets serialize to equal bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SortedDistinct", from = "SortedDistinct")]
pub struct DistinctSet {
    strs: HashSet<Box<str>>,
    nums: HashSet<DistinctKey>,
}

impl DistinctSet {
    fn insert_str(&mut self, s: &str) {
        if !self.strs.contains(s) {
            self.strs.insert(s.into());
        }
    }

    fn insert_num(&mut self, n: Num) {
        self.nums.insert(DistinctKey::from_num(n));
    }

    fn extend(&mut self, other: &DistinctSet) {
        for s in &other.strs {
            self.insert_str(s);
        }
        self.nums.extend(other.nums.iter().cloned());
    }

    /// Number of distinct values.
    pub fn len(&self) -> usize {
        self.strs.len() + self.nums.len()
    }

    /// Whether no value was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The serialized form of a [`DistinctSet`].
#[derive(Serialize, Deserialize)]
struct SortedDistinct {
    strs: Vec<Box<str>>,
    nums: Vec<DistinctKey>,
}

impl From<DistinctSet> for SortedDistinct {
    fn from(set: DistinctSet) -> Self {
        let mut strs: Vec<Box<str>> = set.strs.into_iter().collect();
        let mut nums: Vec<DistinctKey> = set.nums.into_iter().collect();
        strs.sort_unstable();
        nums.sort_unstable();
        SortedDistinct { strs, nums }
    }
}

impl From<SortedDistinct> for DistinctSet {
    fn from(s: SortedDistinct) -> Self {
        DistinctSet { strs: s.strs.into_iter().collect(), nums: s.nums.into_iter().collect() }
    }
}

/// State of `sum`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SumAcc(SumState);

/// State of `mean`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanAcc {
    sum: SumState,
    n: u64,
}

/// The input an aggregate takes from one event.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// `count` takes nothing.
    None,
    /// A numeric value field.
    Num(Num),
    /// A dimension value (for `count_distinct`).
    Str(&'a str),
}

impl Accumulator {
    /// The empty state of `f`.
    pub fn empty(f: AggregateFn) -> Self {
        match f {
            AggregateFn::Count => Accumulator::Count(0),
            AggregateFn::Sum => Accumulator::Sum(SumAcc::default()),
            AggregateFn::Min => Accumulator::Min(None),
            AggregateFn::Max => Accumulator::Max(None),
            AggregateFn::Mean => Accumulator::Mean(MeanAcc::default()),
            AggregateFn::CountDistinct => Accumulator::CountDistinct(Box::default()),
        }
    }

    /// The function this accumulator computes.
    pub fn function(&self) -> AggregateFn {
        match self {
            Accumulator::Count(_) => AggregateFn::Count,
            Accumulator::Sum(_) => AggregateFn::Sum,
            Accumulator::Min(_) => AggregateFn::Min,
            Accumulator::Max(_) => AggregateFn::Max,
            Accumulator::Mean(_) => AggregateFn::Mean,
            Accumulator::CountDistinct(_) => AggregateFn::CountDistinct,
        }
    }

    /// Adds one event's input. Returns `false` (and changes nothing) if the input is not of the kind this
    /// aggregate takes: numeric functions need [`Input::Num`]; `count_distinct` takes a number or a string;
    /// `count` takes anything. [`MetricAccumulator`] only passes matching inputs.
    #[must_use]
    pub fn add(&mut self, input: Input<'_>) -> bool {
        match (self, input) {
            (Accumulator::Count(n), _) => *n += 1,
            (Accumulator::Sum(s), Input::Num(x)) => s.0.add(x),
            (Accumulator::Min(m), Input::Num(x)) => {
                if m.is_none_or(|cur| num_cmp(x, cur).is_lt()) {
                    *m = Some(x);
                }
            }
            (Accumulator::Max(m), Input::Num(x)) => {
                if m.is_none_or(|cur| num_cmp(x, cur).is_gt()) {
                    *m = Some(x);
                }
            }
            (Accumulator::Mean(s), Input::Num(x)) => {
                s.sum.add(x);
                s.n += 1;
            }
            (Accumulator::CountDistinct(set), Input::Num(x)) => set.insert_num(x),
            (Accumulator::CountDistinct(set), Input::Str(s)) => set.insert_str(s),
            _ => return false,
        }
        true
    }

    /// Merges another state of the same function. Returns `false` (and changes nothing) if the functions
    /// differ.
    #[must_use]
    pub fn merge(&mut self, other: &Accumulator) -> bool {
        match (self, other) {
            (Accumulator::Count(a), Accumulator::Count(b)) => *a += b,
            (Accumulator::Sum(a), Accumulator::Sum(b)) => a.0.merge(&b.0),
            (Accumulator::Min(a), Accumulator::Min(b)) => {
                if let Some(y) = *b
                    && a.is_none_or(|x| num_cmp(y, x).is_lt())
                {
                    *a = Some(y);
                }
            }
            (Accumulator::Max(a), Accumulator::Max(b)) => {
                if let Some(y) = *b
                    && a.is_none_or(|x| num_cmp(y, x).is_gt())
                {
                    *a = Some(y);
                }
            }
            (Accumulator::Mean(a), Accumulator::Mean(b)) => {
                a.sum.merge(&b.sum);
                a.n += b.n;
            }
            (Accumulator::CountDistinct(a), Accumulator::CountDistinct(b)) => a.extend(b),
            _ => return false,
        }
        true
    }

    /// The result. Counts finish as [`AggValue::Int`]; an empty `min`/`max`/`mean` as [`AggValue::Null`].
    pub fn finish(&self) -> AggValue {
        match self {
            Accumulator::Count(n) => AggValue::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            Accumulator::Sum(s) => s.0.finish(),
            Accumulator::Min(m) | Accumulator::Max(m) => num_value(*m),
            Accumulator::Mean(s) => {
                if s.n == 0 {
                    AggValue::Null
                } else {
                    match s.sum.finish() {
                        AggValue::Int(i) => AggValue::Float(i as f64 / s.n as f64),
                        AggValue::Float(f) => AggValue::Float(f / s.n as f64),
                        AggValue::Null => AggValue::Null,
                    }
                }
            }
            Accumulator::CountDistinct(set) => AggValue::Int(i64::try_from(set.len()).unwrap_or(i64::MAX)),
        }
    }
}

/// Where an aggregate takes its input from in a decoded [`crate::decode::Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRef {
    /// `count`: nothing.
    None,
    /// Index into [`crate::decode::Event::dims`].
    Dim(usize),
    /// Index into [`crate::decode::Event::values`].
    Value(usize),
}

/// The accumulators of one metric row: one per aggregate of the metric, in spec order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricAccumulator {
    accs: Vec<Accumulator>,
    /// Events added (including through merges).
    events: u64,
}

impl MetricAccumulator {
    /// Empty accumulators for the given functions.
    pub fn empty(functions: impl IntoIterator<Item = AggregateFn>) -> Self {
        MetricAccumulator { accs: functions.into_iter().map(Accumulator::empty).collect(), events: 0 }
    }

    /// Adds one event, taking each aggregate's input as `inputs` says.
    pub fn add_event(&mut self, event: &crate::decode::Event, inputs: &[InputRef]) {
        debug_assert_eq!(inputs.len(), self.accs.len());
        for (acc, input) in self.accs.iter_mut().zip(inputs) {
            let input = match *input {
                InputRef::None => Input::None,
                InputRef::Dim(i) => Input::Str(&event.dims[i]),
                InputRef::Value(i) => Input::Num(event.values[i]),
            };
            let matched = acc.add(input);
            debug_assert!(matched, "spec validation binds inputs to their aggregates");
        }
        self.events += 1;
    }

    /// Merges another metric accumulator of the same metric.
    pub fn merge(&mut self, other: &MetricAccumulator) {
        for (a, b) in self.accs.iter_mut().zip(&other.accs) {
            let matched = a.merge(b);
            debug_assert!(matched, "accumulators of one metric have the same functions");
        }
        self.events += other.events;
    }

    /// Number of events added.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The finished values, in spec order.
    pub fn finish(&self) -> Vec<AggValue> {
        self.accs.iter().map(Accumulator::finish).collect()
    }

    /// The accumulators.
    pub fn accumulators(&self) -> &[Accumulator] {
        &self.accs
    }

    /// Whether these are accumulators for exactly `functions`, in that order (a check for accumulators
    /// that were deserialized).
    pub fn computes(&self, functions: impl IntoIterator<Item = AggregateFn>) -> bool {
        let mut functions = functions.into_iter();
        self.accs.iter().all(|a| functions.next() == Some(a.function())) && functions.next().is_none()
    }
}

/// How far two values of one aggregate may differ and still count as equal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// Bit-for-bit equal (integers equal; floats equal).
    Exact,
    /// `|a - b| <= x`.
    Abs(f64),
    /// `|a - b| <= x * max(|a|, |b|)`.
    Rel(f64),
}

impl Tolerance {
    /// Whether `a` and `b` are equal within this tolerance. Null equals only null.
    pub fn within(&self, a: AggValue, b: AggValue) -> bool {
        match (a, b) {
            (AggValue::Null, AggValue::Null) => true,
            (AggValue::Null, _) | (_, AggValue::Null) => false,
            (AggValue::Int(x), AggValue::Int(y)) if matches!(self, Tolerance::Exact) => x == y,
            _ => {
                let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
                let diff = (x - y).abs();
                match *self {
                    Tolerance::Exact => x == y,
                    Tolerance::Abs(t) => diff <= t,
                    Tolerance::Rel(r) => diff <= r * x.abs().max(y.abs()),
                }
            }
        }
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Exact => f.write_str("exact"),
            Tolerance::Abs(x) => write!(f, "abs({x:e})"),
            Tolerance::Rel(x) => write!(f, "rel({x:e})"),
        }
    }
}

impl FromStr for Tolerance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "exact" {
            return Ok(Tolerance::Exact);
        }
        let bad = || format!("{s:?} is not a tolerance; write \"exact\", \"abs(0.5)\" or \"rel(1e-6)\"");
        let (kind, rest) = s.split_once('(').ok_or_else(bad)?;
        let num = rest.strip_suffix(')').ok_or_else(bad)?;
        let x: f64 = num.trim().parse().map_err(|_| bad())?;
        if !x.is_finite() || x < 0.0 {
            return Err(format!("{s:?}: the bound must be a finite number >= 0"));
        }
        match kind.trim() {
            "abs" => Ok(Tolerance::Abs(x)),
            "rel" => Ok(Tolerance::Rel(x)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for Tolerance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Tolerance {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [AggregateFn; 6] = [
        AggregateFn::Count,
        AggregateFn::Sum,
        AggregateFn::Min,
        AggregateFn::Max,
        AggregateFn::Mean,
        AggregateFn::CountDistinct,
    ];

    fn fold(f: AggregateFn, xs: &[Num]) -> Accumulator {
        let mut a = Accumulator::empty(f);
        for &x in xs {
            assert!(a.add(Input::Num(x)));
        }
        a
    }

    #[test]
    fn values_of_small_inputs() {
        let xs = [Num::Int(3), Num::Int(-1), Num::Int(3), Num::Int(10)];
        let got: Vec<AggValue> = ALL.iter().map(|&f| fold(f, &xs).finish()).collect();
        assert_eq!(
            got,
            vec![
                AggValue::Int(4),
                AggValue::Int(15),
                AggValue::Int(-1),
                AggValue::Int(10),
                AggValue::Float(3.75),
                AggValue::Int(3)
            ]
        );
        let empty: Vec<AggValue> = ALL.iter().map(|&f| Accumulator::empty(f).finish()).collect();
        assert_eq!(
            empty,
            vec![AggValue::Int(0), AggValue::Int(0), AggValue::Null, AggValue::Null, AggValue::Null, AggValue::Int(0)]
        );
    }

    #[test]
    fn integer_sums_are_exact_beyond_f64_precision() {
        let xs = [Num::Int(i64::MAX - 10), Num::Int(7), Num::Int(-(i64::MAX - 10))];
        assert_eq!(fold(AggregateFn::Sum, &xs).finish(), AggValue::Int(7));
        // an overflowing sum finishes as the nearest float instead of wrapping
        let big = [Num::Int(i64::MAX), Num::Int(i64::MAX)];
        assert_eq!(fold(AggregateFn::Sum, &big).finish(), AggValue::Float(2.0 * i64::MAX as f64));
    }

    #[test]
    fn compensated_sum_keeps_small_terms() {
        let xs = [Num::Float(1e16), Num::Float(1.0), Num::Float(-1e16)];
        assert_eq!(fold(AggregateFn::Sum, &xs).finish(), AggValue::Float(1.0));
    }

    #[test]
    fn mismatched_inputs_are_refused_not_dropped_silently() {
        let mut a = Accumulator::empty(AggregateFn::Sum);
        assert!(!a.add(Input::Str("x")));
        assert_eq!(a.finish(), AggValue::Int(0));
        let mut d = Accumulator::empty(AggregateFn::CountDistinct);
        assert!(d.add(Input::Str("x")));
        assert!(d.add(Input::Str("x")));
        assert!(d.add(Input::Num(Num::Float(-0.0))));
        assert!(d.add(Input::Num(Num::Float(0.0))));
        assert_eq!(d.finish(), AggValue::Int(2));
        assert!(!a.merge(&d));
    }

    #[test]
    fn tolerance_parse_and_compare() {
        assert_eq!("exact".parse::<Tolerance>(), Ok(Tolerance::Exact));
        assert_eq!("abs(0.5)".parse::<Tolerance>(), Ok(Tolerance::Abs(0.5)));
        assert_eq!("rel(1e-6)".parse::<Tolerance>(), Ok(Tolerance::Rel(1e-6)));
        for bad in ["abs", "rel(-1)", "abs(x)", "close(1)", "rel(inf)"] {
            assert!(bad.parse::<Tolerance>().is_err(), "{bad}");
        }
        assert!(Tolerance::Abs(0.5).within(AggValue::Float(1.0), AggValue::Float(1.4)));
        assert!(!Tolerance::Abs(0.5).within(AggValue::Float(1.0), AggValue::Float(1.6)));
        assert!(Tolerance::Rel(0.1).within(AggValue::Int(100), AggValue::Int(109)));
        assert!(!Tolerance::Exact.within(AggValue::Int(100), AggValue::Int(101)));
        assert!(!Tolerance::Rel(1.0).within(AggValue::Null, AggValue::Int(0)));
        let printed = Tolerance::Rel(1e-9).to_string();
        assert_eq!(printed.parse::<Tolerance>(), Ok(Tolerance::Rel(1e-9)));
    }

    fn arb_nums() -> impl Strategy<Value = (bool, Vec<Num>)> {
        prop_oneof![
            prop::collection::vec(-1_000_000i64..1_000_000, 0..80)
                .prop_map(|v| (true, v.into_iter().map(Num::Int).collect())),
            prop::collection::vec(-1e6f64..1e6, 0..80).prop_map(|v| (false, v.into_iter().map(Num::Float).collect())),
        ]
    }

    #[test]
    fn accumulators_round_trip_through_serde_deterministically() {
        let mut a = MetricAccumulator::empty(ALL);
        let mut b = MetricAccumulator::empty(ALL);
        let event = |v: Num, s: &str| crate::decode::Event {
            id: "e".into(),
            time: crate::EventTime::UNIX_EPOCH,
            dims: vec![s.into()],
            values: vec![v],
        };
        let inputs = [
            InputRef::None,
            InputRef::Value(0),
            InputRef::Value(0),
            InputRef::Value(0),
            InputRef::Value(0),
            InputRef::Dim(0),
        ];
        let events: Vec<_> = (0..50).map(|i| event(Num::Float(f64::from(i) * 0.1 + 1e16), &format!("k{i}"))).collect();
        for e in &events {
            a.add_event(e, &inputs);
        }
        for e in events.iter().rev() {
            b.add_event(e, &inputs);
        }
        let text = serde_json::to_string(&a).unwrap();
        let back: MetricAccumulator = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a, "bit-for-bit, compensation included");
        assert_eq!(back.finish(), a.finish());
        assert!(back.computes(ALL));
        assert!(!back.computes(ALL[..5].iter().copied()));
        assert!(!back.computes([AggregateFn::Sum; 6]));
        // the distinct sets of a and b were filled in opposite orders; they serialize alike
        let distinct = |m: &MetricAccumulator| serde_json::to_string(&m.accumulators()[5]).unwrap();
        assert_eq!(distinct(&a), distinct(&b));
        // an integer sum beyond i64 keeps its exact i128 state
        let big = fold(AggregateFn::Sum, &[Num::Int(i64::MAX), Num::Int(i64::MAX), Num::Int(-i64::MAX)]);
        let back: Accumulator = serde_json::from_str(&serde_json::to_string(&big).unwrap()).unwrap();
        assert_eq!(back.finish(), AggValue::Int(i64::MAX));
    }

    proptest! {
        /// Merging the accumulators of any split, in any order, equals adding everything at once.
        #[test]
        fn merge_of_any_split_equals_all_at_once(
            (ints, xs) in arb_nums(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6), reverse in any::<bool>(),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(xs.len() + 1)).collect();
            points.push(0);
            points.push(xs.len());
            points.sort_unstable();
            for f in ALL {
                let whole = fold(f, &xs).finish();
                let mut parts: Vec<Accumulator> = points.windows(2).map(|p| fold(f, &xs[p[0]..p[1]])).collect();
                if reverse { parts.reverse(); }
                // merge as a tree: pairs first, then the results (associativity), in the chosen order
                while parts.len() > 1 {
                    let mut next = Vec::new();
                    for pair in parts.chunks(2) {
                        let mut a = pair[0].clone();
                        if let Some(b) = pair.get(1) { prop_assert!(a.merge(b)); }
                        next.push(a);
                    }
                    parts = next;
                }
                let merged = parts.pop().unwrap_or_else(|| Accumulator::empty(f)).finish();
                let exact = ints || matches!(f, AggregateFn::Count | AggregateFn::Min | AggregateFn::Max | AggregateFn::CountDistinct);
                if exact {
                    prop_assert_eq!(merged, whole, "{:?}", f);
                } else {
                    prop_assert!(Tolerance::Rel(1e-9).within(merged, whole) || Tolerance::Abs(1e-6).within(merged, whole),
                        "{:?}: {:?} vs {:?}", f, merged, whole);
                }
            }
        }
    }
}
