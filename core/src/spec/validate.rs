//! [`PipelineSpec::validate`]: the spec's rules, one function per section of the spec (header, source,
//! event, time, metrics with their windows and aggregates, stores, contract), checked in file order so
//! errors come out in the order their fields appear.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{
    AggregateSpec, ClientOption, CompiledAggregate, CompiledMetric, ContractSpec, EventSpec, KafkaArrival, MetricSpec,
    PipelineSpec, SPEC_VERSION, SourceSpec, SpecError, SpecErrors, StoresSpec, TimePolicy, ValidSpec, WindowDef,
    is_postgres,
};
use crate::aggregate::{AggregateFn, InputRef, Tolerance};
use crate::decode::{EventSchema, ValueType};
use crate::time::Duration;
use crate::window::{FixedWindows, SessionWindows, WindowSpec};

impl PipelineSpec {
    /// Checks every rule, fills defaults, resolves paths, and compiles.
    pub fn validate(mut self, file: &str, base_dir: Option<&Path>) -> Result<ValidSpec, SpecErrors> {
        let mut c = Checker { file, errors: Vec::new() };
        check_header(&mut c, self.version, &self.name);
        check_source(&mut c, &mut self.source, base_dir);
        check_event(&mut c, &self.event);
        check_time(&mut c, &self.time);
        let compiled = check_metrics(&mut c, &mut self.metrics, &self.event);
        check_stores(&mut c, &mut self.stores, base_dir);
        check_contract(&mut c, &self.contract);

        if !c.errors.is_empty() {
            return Err(SpecErrors(c.errors));
        }
        let schema = EventSchema {
            id_field: self.event.id.clone(),
            time_field: self.event.time.field.clone(),
            time_format: self.event.time.format,
            dimensions: self.event.dimensions.clone(),
            values: self.event.values.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            max_event_bytes: usize::try_from(self.event.max_event_bytes).unwrap_or(usize::MAX),
            max_future_skew: self.time.max_future_skew,
        };
        Ok(ValidSpec { spec: self, schema, metrics: compiled })
    }
}

/// `version` and `name`.
fn check_header(c: &mut Checker<'_>, version: u32, name: &str) {
    if version != SPEC_VERSION {
        c.err("version", format!("unsupported version {version}; this build reads version {SPEC_VERSION}"));
    }
    c.ident("name".into(), name);
}

/// `[source]`: Kafka settings and client options, or the replayed file's path (resolved).
fn check_source(c: &mut Checker<'_>, source: &mut SourceSpec, base_dir: Option<&Path>) {
    match source {
        SourceSpec::Kafka { brokers, topic, group, options, arrival } => {
            if let KafkaArrival::Field(f) = arrival {
                c.field("source.arrival.field".into(), f);
            }
            for (k, v) in [("brokers", &*brokers), ("topic", &*topic), ("group", &*group)] {
                if v.trim().is_empty() {
                    c.err(format!("source.{k}"), "must not be empty");
                }
            }
            for (k, v) in options.iter() {
                let bad = match v {
                    ClientOption::Env { env } => env.is_empty(),
                    ClientOption::File { file } => file.is_empty(),
                    ClientOption::Literal(_) => false,
                };
                if bad {
                    c.err(format!("source.options.{k:?}"), "the env / file reference must not be empty");
                }
                if ["group.id", "bootstrap.servers", "enable.auto.commit", "enable.auto.offset.store"]
                    .contains(&k.as_str())
                {
                    c.err(format!("source.options.{k:?}"), "is set by tidemark itself (use brokers / group)");
                }
            }
        }
        SourceSpec::File { path, received_at } => {
            match resolve_location(path, base_dir, false) {
                Ok(url) => *path = url.strip_prefix("file://").map(str::to_owned).unwrap_or(url),
                Err(m) => c.err("source.path", m),
            }
            if let Some(f) = received_at {
                c.field("source.received_at".into(), f);
            }
        }
    }
}

/// `[event]`: the event schema's field names (each used once) and size limit.
fn check_event(c: &mut Checker<'_>, ev: &EventSpec) {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |c: &mut Checker<'_>, name: &str, path: String| {
        c.field(path.clone(), name);
        if let Some(first) = names.get(name) {
            c.err(path, format!("field {name:?} is already used by {first}"));
        } else {
            names.insert(name.to_owned(), path);
        }
    };
    claim(c, &ev.id, "event.id".into());
    claim(c, &ev.time.field, "event.time.field".into());
    for (i, d) in ev.dimensions.iter().enumerate() {
        claim(c, d, format!("event.dimensions[{i}]"));
    }
    for v in ev.values.keys() {
        claim(c, v, format!("event.values.{v}"));
    }
    if ev.max_event_bytes == 0 || ev.max_event_bytes > 64 << 20 {
        c.err("event.max_event_bytes", format!("{} must be between 1 and 67108864 (64 MiB)", ev.max_event_bytes));
    }
}

/// `[time]`: the speed layer's event-time policy.
fn check_time(c: &mut Checker<'_>, time: &TimePolicy) {
    c.positive("time.idle_timeout", time.idle_timeout);
    c.positive("time.suspect_lead", time.suspect_lead);
    if time.suspect_confirmations == 0 {
        c.err("time.suspect_confirmations", "must be at least 1 (1 trusts every event at once)");
    }
    if time.suspect_expiry == 0 {
        c.err("time.suspect_expiry", "must be at least 1");
    }
    if let Some(e) = time.early_firing {
        c.positive("time.early_firing", e);
    }
}

/// `[[metrics]]`: names (unique), dimensions, window and aggregates of each metric; returns the metrics
/// that compiled.
fn check_metrics(c: &mut Checker<'_>, metrics: &mut [MetricSpec], event: &EventSpec) -> Vec<CompiledMetric> {
    if metrics.is_empty() {
        c.err("metrics", "at least one [[metrics]] entry is required");
    }
    let mut metric_names = BTreeSet::new();
    let mut compiled = Vec::new();
    for (mi, m) in metrics.iter_mut().enumerate() {
        let mp = format!("metrics[{mi}]");
        c.ident(format!("{mp}.name"), &m.name);
        if !metric_names.insert(m.name.clone()) {
            c.err(format!("{mp}.name"), format!("metric {:?} is defined twice", m.name));
        }
        let dims = check_metric_dimensions(c, &mp, &m.dimensions, event);
        let window = check_window(c, &mp, m.window);
        let aggs = check_aggregates(c, &mp, &m.name, &mut m.aggregates, event);
        if let Some(window) = window {
            let inputs = aggs.iter().map(|a| a.input).collect();
            compiled.push(CompiledMetric { name: m.name.clone(), window, dims, aggregates: aggs, inputs });
        }
    }
    compiled
}

/// `metrics[i].dimensions`: each once, each one of `event.dimensions`; returns `(name, index)` pairs.
fn check_metric_dimensions(
    c: &mut Checker<'_>,
    mp: &str,
    dimensions: &[String],
    event: &EventSpec,
) -> Vec<(String, usize)> {
    let mut dims = Vec::new();
    let mut seen_dims = BTreeSet::new();
    for (di, d) in dimensions.iter().enumerate() {
        if !seen_dims.insert(d) {
            c.err(format!("{mp}.dimensions[{di}]"), format!("dimension {d:?} is listed twice"));
        }
        match event.dimensions.iter().position(|e| e == d) {
            Some(i) => dims.push((d.clone(), i)),
            None => c.err(
                format!("{mp}.dimensions[{di}]"),
                format!("{d:?} is not one of event.dimensions {:?}", event.dimensions),
            ),
        }
    }
    dims
}

/// `metrics[i].window`: the window definition compiled, or `None` after reporting why it is invalid.
fn check_window(c: &mut Checker<'_>, mp: &str, def: WindowDef) -> Option<WindowSpec> {
    let window = match def {
        WindowDef::Tumbling { size, offset } => FixedWindows::tumbling(size, offset).map(WindowSpec::Fixed),
        WindowDef::Hopping { size, slide, offset } => FixedWindows::hopping(size, slide, offset).map(WindowSpec::Fixed),
        WindowDef::Session { gap } => {
            SessionWindows::new(gap).map(WindowSpec::Session).ok_or(crate::window::fixed::FixedWindowError::ZeroSize)
        }
    };
    match (window, def) {
        (Ok(w), _) => Some(w),
        (Err(_), WindowDef::Session { .. }) => {
            c.err(format!("{mp}.window.gap"), "must be greater than 0s");
            None
        }
        (Err(e), _) => {
            let field = match e {
                crate::window::fixed::FixedWindowError::ZeroSlide => "slide",
                crate::window::fixed::FixedWindowError::OffsetTooLarge { .. } => "offset",
                _ => "size",
            };
            c.err(format!("{mp}.window.{field}"), e.to_string());
            None
        }
    }
}

/// `metrics[i].aggregates`: at least one, names unique within the metric, inputs that exist; fills each
/// aggregate's default tolerance and returns those that compiled.
fn check_aggregates(
    c: &mut Checker<'_>,
    mp: &str,
    metric: &str,
    aggregates: &mut [AggregateSpec],
    event: &EventSpec,
) -> Vec<CompiledAggregate> {
    if aggregates.is_empty() {
        c.err(format!("{mp}.aggregates"), "at least one aggregate is required");
    }
    let mut agg_names = BTreeSet::new();
    let mut aggs = Vec::new();
    for (ai, a) in aggregates.iter_mut().enumerate() {
        let ap = format!("{mp}.aggregates[{ai}]");
        c.ident(format!("{ap}.name"), &a.name);
        if !agg_names.insert(a.name.clone()) {
            c.err(format!("{ap}.name"), format!("aggregate {:?} is defined twice in metric {:?}", a.name, metric));
        }
        let input = check_aggregate_input(c, &ap, a, event);
        if let Some((input, ty)) = input {
            let default_tol = match (a.function, ty) {
                (AggregateFn::Mean, _) | (AggregateFn::Sum, Some(ValueType::Float)) => Tolerance::Rel(1e-9),
                _ => Tolerance::Exact,
            };
            let tolerance = *a.tolerance.get_or_insert(default_tol);
            aggs.push(CompiledAggregate {
                name: a.name.clone(),
                function: a.function,
                field: a.field.clone(),
                input,
                tolerance,
            });
        }
    }
    aggs
}

/// `metrics[i].aggregates[j].field`: where the aggregate's input comes from (and the value field's type),
/// or `None` after reporting a field the function cannot take.
fn check_aggregate_input(
    c: &mut Checker<'_>,
    ap: &str,
    a: &AggregateSpec,
    event: &EventSpec,
) -> Option<(InputRef, Option<ValueType>)> {
    let value_field = |f: &str| event.values.keys().position(|v| v == f).map(|i| (i, event.values[f]));
    match (a.function, a.field.as_deref()) {
        (AggregateFn::Count, None) => Some((InputRef::None, None)),
        (AggregateFn::Count, Some(_)) => {
            c.err(format!("{ap}.field"), "count takes no field (it counts events)");
            None
        }
        (f, None) => {
            c.err(format!("{ap}.field"), format!("{} needs a field", f.as_str()));
            None
        }
        (AggregateFn::CountDistinct, Some(name)) => {
            if let Some((i, ty)) = value_field(name) {
                Some((InputRef::Value(i), Some(ty)))
            } else if let Some(i) = event.dimensions.iter().position(|d| d == name) {
                Some((InputRef::Dim(i), None))
            } else {
                c.err(format!("{ap}.field"), format!("{name:?} is neither in event.dimensions nor in event.values"));
                None
            }
        }
        (f, Some(name)) => match value_field(name) {
            Some((i, ty)) => Some((InputRef::Value(i), Some(ty))),
            None => {
                c.err(
                    format!("{ap}.field"),
                    format!("{} needs a numeric field from event.values, and {name:?} is not one", f.as_str()),
                );
                None
            }
        },
    }
}

/// `[stores]`: every location resolved to a URL (only the serving store may be Postgres).
fn check_stores(c: &mut Checker<'_>, st: &mut StoresSpec, base_dir: Option<&Path>) {
    let allow = [("raw_archive", false), ("serving", true), ("dead_letter", false), ("batch_view", false)];
    for ((key, pg), value) in
        allow.iter().zip([&mut st.raw_archive, &mut st.serving, &mut st.dead_letter, &mut st.batch_view])
    {
        match resolve_location(value, base_dir, *pg) {
            Ok(v) => *value = v,
            Err(m) => c.err(format!("stores.{key}"), m),
        }
    }
}

/// `[contract]`: the latency / correctness contract.
fn check_contract(c: &mut Checker<'_>, contract: &ContractSpec) {
    c.positive("contract.finalization_latency", contract.finalization_latency);
    let a = contract.accuracy_target;
    if !(a > 0.0 && a <= 1.0) {
        c.err("contract.accuracy_target", format!("{a} must be in (0, 1]"));
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 63
}

fn is_field_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z' | 'A'..='Z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && s.len() <= 128
}

const IDENT_RULE: &str =
    "must be a lowercase identifier: a-z, 0-9 and _, starting with a letter or _, at most 63 characters";
const FIELD_RULE: &str =
    "must be a field name: letters, digits, _, - and ., starting with a letter or _, at most 128 characters";

struct Checker<'a> {
    file: &'a str,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            position: None,
            path: path.into(),
            message: message.into(),
        });
    }

    fn ident(&mut self, path: String, value: &str) {
        if !is_identifier(value) {
            self.err(path, format!("{value:?} {IDENT_RULE}"));
        }
    }

    fn field(&mut self, path: String, value: &str) {
        if !is_field_name(value) {
            self.err(path, format!("{value:?} {FIELD_RULE}"));
        }
    }

    fn positive(&mut self, path: &str, d: Duration) {
        if d.is_zero() {
            self.err(path, "must be greater than 0s");
        }
    }
}

fn resolve_location(path: &str, base_dir: Option<&Path>, allow_postgres: bool) -> Result<String, String> {
    let p = path.trim();
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    if is_postgres(p) {
        return if allow_postgres {
            Ok(p.to_owned())
        } else {
            Err(format!("{p:?}: only the serving store may be Postgres"))
        };
    }
    if let Some((scheme, _)) = p.split_once("://") {
        return match scheme {
            "file" | "s3" | "s3a" | "memory" => Ok(p.to_owned()),
            other => Err(format!(
                "unsupported scheme {other:?}; use file://, s3://, memory://{}",
                if allow_postgres { " or postgres://" } else { "" }
            )),
        };
    }
    let abs = match base_dir {
        Some(dir) if Path::new(p).is_relative() => dir.join(p),
        _ => Path::new(p).to_path_buf(),
    };
    if abs.is_relative() {
        return Err(format!("{p:?} is a relative path and the spec's folder is unknown; use a file:// URL"));
    }
    Ok(format!("file://{}", abs.display()))
}
