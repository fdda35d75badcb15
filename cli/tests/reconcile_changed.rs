//! Issue 19: `tidemark reconcile --changed` redoes only the hours new arrivals (late events, replayed
//! duplicates) can touch, and leaves the serving store equal to a full batch of the day. Per case (its
//! shape drawn from a seed: how late, where the arrivals are cut, how many rounds, how many lines are
//! replayed and from where): stream a first part of a generated day, batch it, run `--changed` (the first
//! run covers the whole archive); then, round after round, stream the next part plus a replay of earlier
//! lines and run `--changed` again; then a full batch and a full reconcile of the day must find 0
//! differences. A tumbling metric and a session metric (late events bridge and extend sessions).
//!
//! CI runs 4 cases; `TIDEMARK_LONG=1` (the long tier, scripts/soak.sh) runs 100. `TIDEMARK_CHANGED_SEED=s`
//! runs the one case of seed `s` (each case prints its seed and shape).

mod common;

use std::path::Path;

use common::tidemark;

const FROM: &str = "2026-01-01T00:00:00Z";
const TO: &str = "2026-01-02T00:00:00Z";

const SPEC: &str = r#"version = 1
name = "changed"
[source]
type = "file"
path = "events.jsonl"
received_at = "received_at"
[event]
id = "event_id"
time = { field = "ts", format = "rfc3339" }
dimensions = ["user", "page", "country"]
values = { latency_ms = "int", bytes = "float" }
[time]
watermark_delay = "5s"
allowed_lateness = "1m"
idle_timeout = "30s"
late_policy = "update"
max_future_skew = "5m"
[[metrics]]
name = "views_per_page"
dimensions = ["page"]
window = { type = "tumbling", size = "1m" }
aggregates = [{ name = "views", fn = "count" }, { name = "latency_sum", fn = "sum", field = "latency_ms" }]
[[metrics]]
name = "user_sessions"
dimensions = ["user"]
window = { type = "session", gap = "30s" }
aggregates = [{ name = "views", fn = "count" }]
[stores]
raw_archive = "raw"
serving = "serving"
dead_letter = "dead"
batch_view = "batch"
"#;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = tidemark(args);
    assert_eq!(code, 0, "tidemark {args:?}: {err}\n{out}");
    out
}

/// splitmix64: the shape of a case from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// What one case does.
#[derive(Debug)]
struct Shape {
    /// Percent of views arriving late (by 2-20 minutes).
    late_percent: usize,
    /// Arrivals streamed before the first `--changed` run, per mille of all lines.
    first_cut: usize,
    /// Further rounds of arrivals, each followed by a `--changed` run.
    rounds: usize,
    /// Earlier lines replayed in each round (duplicate deliveries).
    replay: usize,
}

impl Shape {
    fn of(seed: u64) -> Self {
        let mut r = Rng(seed);
        Shape {
            late_percent: r.range(1, 10),
            first_cut: r.range(500, 950),
            rounds: r.range(1, 3),
            replay: r.range(0, 200),
        }
    }
}

/// 6000 views over ~11 hours of event time, `late_share` of them late by 2-20 minutes, no malformed lines:
/// the lines in arrival order.
fn generate(dir: &Path, seed: u64, late_share: &str) -> Vec<String> {
    let all = dir.join("all.jsonl");
    ok(&[
        "gen",
        "--to",
        "file",
        "--out",
        all.to_str().unwrap(),
        "--events",
        "6000",
        "--seed",
        &seed.to_string(),
        "--rate",
        "0.5",
        "--start",
        FROM,
        "--late-share",
        late_share,
        "--late-min",
        "2m",
        "--late-max",
        "20m",
        "--malformed-share",
        "0",
        "--users",
        "300",
        "--pages",
        "20",
    ]);
    std::fs::read_to_string(&all).unwrap().lines().map(str::to_owned).collect()
}

/// Writes the spec and `first` as the events file, streams and batches them: (events file, spec path).
fn start(dir: &Path, first: &[String]) -> (std::path::PathBuf, String) {
    let events = dir.join("events.jsonl");
    std::fs::write(&events, first.join("\n") + "\n").unwrap();
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let spec = spec.to_str().unwrap().to_owned();
    ok(&["stream", "--spec", &spec, "--finish", "--listen", "off"]);
    ok(&["batch", "--spec", &spec, "--from", FROM, "--to", TO]);
    (events, spec)
}

fn case(dir: &Path, seed: u64) {
    let shape = Shape::of(seed);
    println!("case seed {seed}: {shape:?}");
    let lines = generate(dir, seed, &format!("0.{:02}", shape.late_percent));
    let mut rng = Rng(seed ^ 0x5eed);
    let cut = lines.len() * shape.first_cut / 1000;
    let (events, spec) = start(dir, &lines[..cut]);
    let spec = spec.as_str();
    let first = json(&ok(&["reconcile", "--spec", spec, "--changed", "--json"]));
    assert_eq!(first["first_run"], true);
    assert_eq!(first["new_arrivals"].as_u64().unwrap(), cut as u64, "every archived line is new at first");
    let clean = json(&ok(&["reconcile", "--spec", spec, "--from", FROM, "--to", TO, "--dry-run", "--json"]));
    assert_eq!(clean["differences"], 0, "{clean}");

    // round after round, the next part of the day arrives, plus a replay of earlier lines
    let mut at = cut;
    for round in 1..=shape.rounds {
        let next = if round == shape.rounds { lines.len() } else { at + (lines.len() - at) / 2 };
        let mut more: Vec<String> = lines[at..next].to_vec();
        let replay = shape.replay.min(at);
        let from = rng.range(0, at - replay);
        more.extend(lines[from..from + replay].iter().cloned());
        let mut text = std::fs::read_to_string(&events).unwrap();
        text.push_str(&(more.join("\n") + "\n"));
        std::fs::write(&events, text).unwrap();
        at = next;
        ok(&["stream", "--spec", spec, "--finish", "--listen", "off"]);
        let run = json(&ok(&["reconcile", "--spec", spec, "--changed", "--json"]));
        assert_eq!(run["first_run"], false);
        assert_eq!(run["new_arrivals"].as_u64().unwrap(), more.len() as u64, "only what arrived since: {run}");
        if more.is_empty() {
            assert!(run["spans"].as_array().unwrap().is_empty(), "{run}");
        }
    }
    // a further run finds nothing new
    let again = json(&ok(&["reconcile", "--spec", spec, "--changed", "--json"]));
    assert_eq!(again["new_arrivals"], 0, "{again}");
    assert!(again["spans"].as_array().unwrap().is_empty(), "{again}");

    // equal to a full batch + reconcile of the day: a full batch now, then nothing differs
    ok(&["batch", "--spec", spec, "--from", FROM, "--to", TO]);
    let full = json(&ok(&["reconcile", "--spec", spec, "--from", FROM, "--to", TO, "--dry-run", "--json"]));
    assert_eq!(full["differences"], 0, "seed {seed}: the incremental run left differences: {full}");
}

/// The `--changed` runs of an hour late in the day touch a few hours, not the day (the shape of seed 3: the
/// last 10% of arrivals, ~70 minutes, plus a replay of 50 lines from just before them).
#[test]
fn issue_19_reconcile_changed_redoes_a_few_hours() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let lines = generate(dir, 3, "0.05");
    let cut = lines.len() * 9 / 10;
    let (events, spec) = start(dir, &lines[..cut]);
    let spec = spec.as_str();
    ok(&["reconcile", "--spec", spec, "--changed", "--json"]);
    let mut more: Vec<String> = lines[cut..].to_vec();
    more.extend(lines[cut - 400..cut - 350].iter().cloned());
    let mut text = std::fs::read_to_string(&events).unwrap();
    text.push_str(&(more.join("\n") + "\n"));
    std::fs::write(&events, text).unwrap();
    ok(&["stream", "--spec", spec, "--finish", "--listen", "off"]);
    let second = json(&ok(&["reconcile", "--spec", spec, "--changed", "--json"]));
    let spans = second["spans"].as_array().unwrap();
    assert!(!spans.is_empty());
    let hours: i64 = spans
        .iter()
        .map(|s| {
            let t = |k: &str| s[k].as_str().unwrap().parse::<tidemark_core::EventTime>().unwrap().as_micros();
            (t("to") - t("from")) / 3_600_000_000
        })
        .sum();
    // the new lines are the last ~70 minutes of arrivals and a replay from before them: with the session
    // lookaround (1 h) and hour alignment that is at most 5 of the 11 hours
    assert!(hours <= 5, "a few hours of the day, not all of it: {spans:?}");
}

#[test]
fn issue_19_reconcile_changed_equals_a_full_batch_and_reconcile() {
    let seeds: Vec<u64> = match std::env::var("TIDEMARK_CHANGED_SEED") {
        Ok(s) => vec![s.parse().expect("TIDEMARK_CHANGED_SEED is a number")],
        Err(_) if std::env::var("TIDEMARK_LONG").is_ok_and(|v| v == "1") => (1..=100).collect(),
        Err(_) => vec![3, 11, 29, 47],
    };
    for seed in seeds {
        let dir = tempfile::tempdir().unwrap();
        case(dir.path(), seed);
    }
}
