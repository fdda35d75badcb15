//! A seeded, deterministic page-view stream with the disorder real pipelines see, for `tidemark demo` and
//! `tidemark gen`.
//!
//! Page view `i` happens at `start + i / rate` (event time) and arrives after a delay:
//! - on time: uniform in `[0, disorder]` (so neighbours swap places: out of order within seconds);
//! - late (`late_share` of views): uniform in `[late_min, late_max]` (minutes);
//! - a duplicate delivery (`duplicate_share`): the same line (same event id) arrives once more, up to
//!   `duplicate_delay_max` after the first copy;
//! - malformed lines (`malformed_share`, extra lines): truncated JSON, wrong types, a missing or
//!   unparsable time, `null` dimensions, non-objects, events from the future.
//!
//! Users and pages are Zipf-distributed (a few hot keys), countries follow a fixed skewed weighting.
//! Lines are written in arrival order, each with a `received_at` field (RFC 3339) holding its arrival
//! time, so a replay can use the simulated arrival clock. The same configuration and seed always give the
//! same bytes (the PRNG is PCG-64, pinned through Cargo.lock).

use std::io::Write;

use anyhow::Context as _;
use rand::{RngExt as _, SeedableRng as _};
use rand_distr::{Distribution as _, LogNormal, Zipf};
use rand_pcg::Pcg64;
use tidemark_core::{Duration, EventTime};

/// Countries and their relative weights.
const COUNTRIES: [(&str, u32); 12] = [
    ("US", 30),
    ("DE", 12),
    ("IN", 11),
    ("GB", 9),
    ("BR", 8),
    ("FR", 7),
    ("JP", 6),
    ("CA", 5),
    ("NL", 4),
    ("SE", 3),
    ("KE", 3),
    ("NZ", 2),
];

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// PRNG seed.
    pub seed: u64,
    /// Distinct page views (duplicates and malformed lines come on top).
    pub events: u64,
    /// Event time of the first page view.
    pub start: EventTime,
    /// Page views per second of event time.
    pub rate: f64,
    /// Largest delay of an on-time view (out of order within this).
    pub disorder: Duration,
    /// Share of views that arrive late, by `late_min ..= late_max`.
    pub late_share: f64,
    /// Shortest delay of a late view.
    pub late_min: Duration,
    /// Longest delay of a late view.
    pub late_max: Duration,
    /// Share of views delivered twice.
    pub duplicate_share: f64,
    /// Longest time between the two deliveries of a duplicated view.
    pub duplicate_delay_max: Duration,
    /// Malformed lines, as a share of views.
    pub malformed_share: f64,
    /// Distinct users (Zipf exponent `user_skew`).
    pub users: u32,
    /// Zipf exponent of users.
    pub user_skew: f64,
    /// Distinct pages (Zipf exponent `page_skew`).
    pub pages: u32,
    /// Zipf exponent of pages.
    pub page_skew: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 7,
            events: 100_000,
            start: EventTime::from_secs(1_767_225_600).expect("2026-01-01T00:00:00Z is in range"),
            rate: 500.0,
            disorder: Duration::from_secs(3),
            late_share: 0.01,
            late_min: Duration::from_secs(60),
            late_max: Duration::from_secs(12 * 60),
            duplicate_share: 0.001,
            duplicate_delay_max: Duration::from_secs(120),
            malformed_share: 0.0005,
            users: 20_000,
            user_skew: 1.0,
            pages: 400,
            page_skew: 1.1,
        }
    }
}

/// How a line came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LineKind {
    /// A view arriving within `disorder` of its event time.
    OnTime,
    /// A view arriving `late_min ..= late_max` after its event time.
    Late,
    /// The second delivery of a view.
    Duplicate,
    /// A line that must fail decoding.
    Malformed(Malformation),
}

/// The kinds of broken lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformation {
    /// The line is cut off mid-object.
    Truncated,
    /// `latency_ms` is a string.
    WrongType,
    /// No `ts` field.
    MissingTime,
    /// `ts` is not a time.
    BadTime,
    /// `user` is `null`.
    NullDimension,
    /// A JSON array instead of an object.
    NotObject,
    /// Event time an hour after the receive time.
    Future,
}

impl Malformation {
    const ALL: [Malformation; 7] = [
        Malformation::Truncated,
        Malformation::WrongType,
        Malformation::MissingTime,
        Malformation::BadTime,
        Malformation::NullDimension,
        Malformation::NotObject,
        Malformation::Future,
    ];
}

/// One page view.
#[derive(Debug, Clone, Copy)]
struct View {
    ts: EventTime,
    user: u32,
    page: u32,
    country: u8,
    latency_ms: u32,
    /// Response size in bytes (integral: f64 sums of integers are exact in any order, so the speed and
    /// batch layers agree to the bit).
    bytes: u32,
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: EventTime,
    view: u32,
    kind: LineKind,
}

/// A generated stream: views and their arrivals, sorted by arrival time.
#[derive(Debug)]
pub struct Generation {
    seed: u64,
    views: Vec<View>,
    arrivals: Vec<Arrival>,
}

/// Counts of a generated stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GenStats {
    /// Lines in all.
    pub lines: u64,
    /// Distinct page views.
    pub views: u64,
    /// Views that arrive late.
    pub late: u64,
    /// Second deliveries.
    pub duplicates: u64,
    /// Malformed lines.
    pub malformed: u64,
    /// Lines whose event time is before the largest event time of an earlier line.
    pub out_of_order: u64,
    /// Event time of the first and the last view.
    pub first_ts: Option<EventTime>,
    pub last_ts: Option<EventTime>,
}

/// A non-negative span of microseconds (saturating).
fn us(n: i64) -> Duration {
    Duration::from_micros(n.max(0)).unwrap_or(Duration::MAX)
}

fn micros(d: Duration) -> i64 {
    d.as_micros()
}

/// Uniform in `[lo, hi]` microseconds.
fn uniform(rng: &mut Pcg64, lo: i64, hi: i64) -> i64 {
    if hi <= lo { lo } else { rng.random_range(lo..=hi) }
}

impl GenConfig {
    /// Checks the settings; the message names the flag.
    pub fn check(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(format!("--{name} must be within [0, 1], got {v}")) }
        };
        share("late-share", self.late_share)?;
        share("duplicate-share", self.duplicate_share)?;
        share("malformed-share", self.malformed_share)?;
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("--rate must be a positive number of events per second, got {}", self.rate));
        }
        if self.late_min > self.late_max {
            return Err(format!("--late-min ({}) must not exceed --late-max ({})", self.late_min, self.late_max));
        }
        if self.users == 0 || self.pages == 0 {
            return Err("--users and --pages must be at least 1".into());
        }
        if self.events > u64::from(u32::MAX) {
            return Err(format!("--events must be at most {}", u32::MAX));
        }
        Ok(())
    }

    /// Generates the stream (all of it in memory: about 50 bytes per view).
    pub fn generate(&self) -> anyhow::Result<Generation> {
        self.check().map_err(crate::cmd::user_error)?;
        let mut rng = Pcg64::seed_from_u64(self.seed);
        #[allow(clippy::cast_precision_loss)]
        let users = Zipf::new(f64::from(self.users), self.user_skew).context("user skew")?;
        let pages = Zipf::new(f64::from(self.pages), self.page_skew).context("page skew")?;
        let latency = LogNormal::<f64>::new(80f64.ln(), 0.6).context("latency distribution")?;
        let size = LogNormal::<f64>::new(9.0, 1.0).context("size distribution")?;
        let country_total: u32 = COUNTRIES.iter().map(|c| c.1).sum();
        let n = usize::try_from(self.events).context("--events")?;
        let mut views = Vec::with_capacity(n);
        let mut arrivals = Vec::with_capacity(n + n / 50);
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let step_us = 1e6 / self.rate;
        for i in 0..n {
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let offset = (i as f64 * step_us) as i64;
            let ts = self.start.saturating_add(us(offset));
            // Event times in whole milliseconds, as most producers write them.
            let ts = EventTime::from_micros(ts.as_micros() - ts.as_micros().rem_euclid(1000)).unwrap_or(ts);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let user = users.sample(&mut rng) as u32;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let page = pages.sample(&mut rng) as u32;
            let mut pick = rng.random_range(0..country_total);
            let mut country = 0u8;
            for (k, (_, w)) in COUNTRIES.iter().enumerate() {
                if pick < *w {
                    country = u8::try_from(k).unwrap_or(0);
                    break;
                }
                pick -= w;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let latency_ms = latency.sample(&mut rng).min(60_000.0) as u32;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bytes = size.sample(&mut rng).min(1e8) as u32;
            let view = u32::try_from(i).context("view index")?;
            views.push(View { ts, user, page, country, latency_ms, bytes });

            let late = rng.random_bool(self.late_share);
            let (delay, kind) = if late {
                (uniform(&mut rng, micros(self.late_min), micros(self.late_max)), LineKind::Late)
            } else {
                (uniform(&mut rng, 0, micros(self.disorder)), LineKind::OnTime)
            };
            let at = ts.saturating_add(us(delay));
            arrivals.push(Arrival { at, view, kind });
            if rng.random_bool(self.duplicate_share) {
                let again = uniform(&mut rng, 1_000_000, micros(self.duplicate_delay_max).max(1_000_000));
                arrivals.push(Arrival { at: at.saturating_add(us(again)), view, kind: LineKind::Duplicate });
            }
            if rng.random_bool(self.malformed_share) {
                let m = Malformation::ALL[rng.random_range(0..Malformation::ALL.len())];
                let delay = uniform(&mut rng, 0, micros(self.disorder));
                arrivals.push(Arrival { at: ts.saturating_add(us(delay)), view, kind: LineKind::Malformed(m) });
            }
        }
        // Stable: lines arriving at the same instant keep generation order.
        arrivals.sort_by_key(|a| a.at);
        Ok(Generation { seed: self.seed, views, arrivals })
    }
}

fn rfc3339_millis(t: EventTime) -> String {
    chrono::DateTime::from_timestamp_micros(t.as_micros())
        .map_or_else(|| t.to_string(), |d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Generation {
    /// Lines in all.
    pub fn len(&self) -> usize {
        self.arrivals.len()
    }

    /// Whether there are no lines.
    pub fn is_empty(&self) -> bool {
        self.arrivals.is_empty()
    }

    /// Counts of what was generated.
    pub fn stats(&self) -> GenStats {
        let mut s =
            GenStats { lines: self.arrivals.len() as u64, views: self.views.len() as u64, ..GenStats::default() };
        let mut max_ts = EventTime::MIN;
        for a in &self.arrivals {
            match a.kind {
                LineKind::OnTime => {}
                LineKind::Late => s.late += 1,
                LineKind::Duplicate => s.duplicates += 1,
                LineKind::Malformed(_) => s.malformed += 1,
            }
            let ts = self.views[a.view as usize].ts;
            if ts < max_ts {
                s.out_of_order += 1;
            }
            max_ts = max_ts.max(ts);
        }
        s.first_ts = self.views.first().map(|v| v.ts);
        s.last_ts = self.views.last().map(|v| v.ts);
        s
    }

    /// Writes line `i` (in arrival order, `i < len()`) into `buf` (appending) and returns its arrival time,
    /// kind and user.
    pub fn line_at(&self, i: usize, buf: &mut Vec<u8>) -> (EventTime, LineKind, String) {
        let a = &self.arrivals[i];
        let user = self.write_line(a, buf);
        (a.at, a.kind, user)
    }

    /// Calls `f(arrival, kind, line)` with every line (JSON text without line end) in arrival order.
    pub fn for_each_line<E>(&self, mut f: impl FnMut(EventTime, LineKind, &[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut buf = Vec::with_capacity(256);
        for a in &self.arrivals {
            buf.clear();
            self.write_line(a, &mut buf);
            f(a.at, a.kind, &buf)?;
        }
        Ok(())
    }

    /// Writes every line (JSON Lines) to `out`; `progress` is called with the lines written so far every
    /// 10 000 lines.
    pub fn write_jsonl(&self, out: &mut impl Write, mut progress: impl FnMut(u64)) -> std::io::Result<()> {
        let mut n = 0u64;
        self.for_each_line(|_, _, line| -> std::io::Result<()> {
            out.write_all(line)?;
            out.write_all(b"\n")?;
            n += 1;
            if n.is_multiple_of(10_000) {
                progress(n);
            }
            Ok(())
        })?;
        progress(n);
        out.flush()
    }

    /// Writes one line into `buf`; returns the user.
    fn write_line(&self, a: &Arrival, buf: &mut Vec<u8>) -> String {
        let v = self.views[a.view as usize];
        let user = format!("u{}", v.user);
        let id = format!("pv-{}-{}", self.seed, a.view);
        let ts = rfc3339_millis(v.ts);
        let received = rfc3339_millis(a.at);
        let page = if v.page == 1 { "/".to_owned() } else { format!("/p/{}", v.page) };
        let country = COUNTRIES[usize::from(v.country)].0;
        let bytes = v.bytes;
        // `write!` into a Vec cannot fail.
        let _: std::io::Result<()> = match a.kind {
            LineKind::OnTime | LineKind::Late | LineKind::Duplicate => write!(
                buf,
                r#"{{"event_id":"{id}","ts":"{ts}","received_at":"{received}","user":"{user}","page":"{page}","country":"{country}","latency_ms":{},"bytes":{bytes}}}"#,
                v.latency_ms
            ),
            LineKind::Malformed(m) => {
                let id = format!("{id}-x");
                match m {
                    Malformation::Truncated => {
                        let full = format!(
                            r#"{{"event_id":"{id}","ts":"{ts}","received_at":"{received}","user":"{user}","page":"{page}","country":"{country}","latency_ms":{}"#,
                            v.latency_ms
                        );
                        // Cut somewhere in the second half; the closing brace is never reached.
                        let cut = full.len() / 2 + usize::try_from(a.view).unwrap_or(0) % (full.len() / 2);
                        let cut = (0..=cut).rev().find(|&c| full.is_char_boundary(c)).unwrap_or(0);
                        buf.write_all(&full.as_bytes()[..cut])
                    }
                    Malformation::WrongType => write!(
                        buf,
                        r#"{{"event_id":"{id}","ts":"{ts}","received_at":"{received}","user":"{user}","page":"{page}","country":"{country}","latency_ms":"slow","bytes":{bytes}}}"#
                    ),
                    Malformation::MissingTime => write!(
                        buf,
                        r#"{{"event_id":"{id}","received_at":"{received}","user":"{user}","page":"{page}","country":"{country}","latency_ms":{},"bytes":{bytes}}}"#,
                        v.latency_ms
                    ),
                    Malformation::BadTime => write!(
                        buf,
                        r#"{{"event_id":"{id}","ts":"yesterday at noon","received_at":"{received}","user":"{user}","page":"{page}","country":"{country}","latency_ms":{},"bytes":{bytes}}}"#,
                        v.latency_ms
                    ),
                    Malformation::NullDimension => write!(
                        buf,
                        r#"{{"event_id":"{id}","ts":"{ts}","received_at":"{received}","user":null,"page":"{page}","country":"{country}","latency_ms":{},"bytes":{bytes}}}"#,
                        v.latency_ms
                    ),
                    Malformation::NotObject => {
                        write!(buf, r#"["{id}","{ts}","{user}","{page}",{}]"#, v.latency_ms)
                    }
                    Malformation::Future => {
                        let future = rfc3339_millis(a.at.saturating_add(Duration::from_secs(3600)));
                        write!(
                            buf,
                            r#"{{"event_id":"{id}","ts":"{future}","received_at":"{received}","user":"{user}","page":"{page}","country":"{country}","latency_ms":{},"bytes":{bytes}}}"#,
                            v.latency_ms
                        )
                    }
                }
            }
        };
        user
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tidemark_core::PipelineSpec;

    use super::*;

    fn bytes_of(g: &Generation) -> Vec<u8> {
        let mut out = Vec::new();
        g.write_jsonl(&mut out, |_| {}).unwrap();
        out
    }

    fn schema() -> tidemark_core::EventSchema {
        let spec = PipelineSpec::parse(
            include_str!("../../examples/pageviews.toml"),
            "pageviews.toml",
            Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))),
        )
        .expect("the example spec is valid");
        spec.schema().clone()
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let config = GenConfig { events: 20_000, ..GenConfig::default() };
        let a = bytes_of(&config.generate().unwrap());
        let b = bytes_of(&config.generate().unwrap());
        assert_eq!(a, b);
        assert!(a.len() > 20_000 * 150, "{} bytes", a.len());
        let c = bytes_of(&GenConfig { seed: 8, ..config }.generate().unwrap());
        assert_ne!(a, c);
    }

    /// Measures the disorder from the bytes alone (decoding every line as the pipeline does) and compares
    /// it with what was asked.
    #[test]
    fn disorder_shares_match_the_settings() {
        let config = GenConfig {
            events: 200_000,
            late_share: 0.02,
            duplicate_share: 0.005,
            malformed_share: 0.002,
            ..GenConfig::default()
        };
        let g = config.generate().unwrap();
        let schema = schema();
        let text = bytes_of(&g);
        let (mut ok, mut failed, mut late, mut on_time_max, mut out_of_order) = (0u64, 0u64, 0u64, 0i64, 0u64);
        let mut seen: HashMap<Box<str>, u32> = HashMap::new();
        let mut max_ts = EventTime::MIN;
        let mut last_arrival = EventTime::MIN;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: Option<serde_json::Value> = serde_json::from_slice(line).ok();
            let received = v
                .as_ref()
                .and_then(|v| v.get("received_at"))
                .and_then(|r| r.as_str())
                .and_then(EventTime::parse_rfc3339);
            let Ok(e) = schema.decode(line, received.unwrap_or(EventTime::MAX)) else {
                failed += 1;
                continue;
            };
            ok += 1;
            let received = received.expect("decodable lines carry received_at");
            assert!(received >= last_arrival, "lines are in arrival order");
            last_arrival = received;
            if e.time < max_ts {
                out_of_order += 1;
            }
            max_ts = max_ts.max(e.time);
            let copies = seen.entry(e.id).or_default();
            *copies += 1;
            if *copies > 1 {
                continue; // a re-delivery: its delay says nothing about lateness
            }
            let delay = received.since(e.time).expect("arrives after it happens").as_micros();
            if delay >= config.late_min.as_micros() {
                assert!(delay <= config.late_max.as_micros());
                late += 1;
            } else {
                on_time_max = on_time_max.max(delay);
            }
        }
        let views = config.events;
        let dups: u64 = seen.values().map(|&n| u64::from(n - 1)).sum();
        assert_eq!(seen.len() as u64, views, "every view is there");
        assert!(seen.values().all(|&n| n <= 2));
        let within = |measured: u64, share: f64| {
            #[allow(clippy::cast_precision_loss)]
            let expected = share * views as f64;
            let sd = (expected * (1.0 - share)).sqrt();
            #[allow(clippy::cast_precision_loss)]
            let m = measured as f64;
            assert!((m - expected).abs() <= 4.0 * sd + 1.0, "measured {measured}, expected {expected:.0} ± {sd:.1}");
        };
        within(late, config.late_share);
        within(dups, config.duplicate_share);
        within(failed, config.malformed_share);
        assert!(on_time_max <= config.disorder.as_micros());
        assert!(out_of_order > views / 4, "on-time disorder reorders neighbours: {out_of_order}");
        assert_eq!(ok + failed, g.len() as u64);
        let stats = g.stats();
        assert_eq!(stats.duplicates, dups);
        assert_eq!(stats.malformed, failed);
        assert_eq!(stats.lines, g.len() as u64);
    }

    #[test]
    fn every_kind_of_malformed_line_fails_decoding() {
        let config = GenConfig { events: 50_000, malformed_share: 0.02, ..GenConfig::default() };
        let g = config.generate().unwrap();
        let schema = schema();
        let mut kinds = HashMap::new();
        g.for_each_line(|arrival, kind, line| {
            let result = schema.decode(line, arrival);
            match kind {
                LineKind::Malformed(m) => {
                    let err = result.expect_err(&format!("{m:?} must fail: {}", String::from_utf8_lossy(line)));
                    kinds.insert(m, err.reason);
                }
                _ => {
                    result.unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
                }
            }
            Ok::<(), ()>(())
        })
        .unwrap();
        use tidemark_core::ReasonCode as R;
        let expected = [
            (Malformation::Truncated, R::NotJson),
            (Malformation::WrongType, R::WrongType),
            (Malformation::MissingTime, R::MissingField),
            (Malformation::BadTime, R::BadTime),
            (Malformation::NullDimension, R::NullField),
            (Malformation::NotObject, R::NotObject),
            (Malformation::Future, R::FutureEvent),
        ];
        for (m, reason) in expected {
            assert_eq!(kinds.get(&m), Some(&reason), "{m:?}");
        }
    }

    #[test]
    fn keys_are_skewed() {
        let g = GenConfig { events: 50_000, ..GenConfig::default() }.generate().unwrap();
        let mut pages: HashMap<u32, u64> = HashMap::new();
        for v in &g.views {
            *pages.entry(v.page).or_default() += 1;
        }
        let mut counts: Vec<u64> = pages.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // Zipf(1.1) over 400 pages: the top page alone takes well over 10%, the top 10 over a third.
        assert!(counts[0] * 10 > 50_000, "top page {}", counts[0]);
        assert!(counts[..10].iter().sum::<u64>() * 3 > 50_000);
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let err = GenConfig { late_share: 1.5, ..GenConfig::default() }.check().unwrap_err();
        assert!(err.contains("--late-share"), "{err}");
        let err = GenConfig { rate: 0.0, ..GenConfig::default() }.check().unwrap_err();
        assert!(err.contains("--rate"), "{err}");
    }
}
