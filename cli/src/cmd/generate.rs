//! `tidemark gen`: a deterministic page-view stream with disorder, to a JSON Lines file or a Kafka topic.

use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use clap::ValueEnum;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tidemark_core::{Duration, EventTime};

use crate::pageviews::{GenConfig, GenStats, Generation};

/// Generate page views (event_id, ts, user, page, country, latency_ms, bytes: the fields of
/// examples/pageviews.toml) with the disorder real streams have: out of order within seconds, a share
/// arriving minutes late, duplicate deliveries, malformed lines, and skewed (Zipf) users and pages.
///
/// The same flags and seed always produce the same lines. Each line also carries `received_at`, its
/// simulated arrival time, and lines come in arrival order.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
tidemark gen --to file --out events.jsonl --events 100000 --seed 7\n  \
tidemark gen --to kafka --brokers localhost:9092 --topic pageviews --events 1000000\n  \
tidemark gen --to kafka --brokers localhost:9092 --topic pageviews --live --rate 200   # real time, now\n  \
tidemark gen --to file --out - --events 10 --late-share 0 --malformed-share 0 | head -3\n\n\
Kafka records are keyed by user, so each user's views stay in order within one partition, and stamped\n\
with their arrival time (CreateTime), which tidemark stream takes as the arrival clock.")]
pub struct Args {
    /// Where to write.
    #[arg(long, value_enum)]
    to: Target,
    /// Output file for `--to file` (`-`: standard output).
    #[arg(long, value_name = "PATH", required_if_eq("to", "file"))]
    out: Option<PathBuf>,
    /// Kafka bootstrap servers for `--to kafka`.
    #[arg(long, value_name = "HOSTS", required_if_eq("to", "kafka"))]
    brokers: Option<String>,
    /// Kafka topic for `--to kafka` (it must exist, or the broker must auto-create topics).
    #[arg(long, value_name = "TOPIC", required_if_eq("to", "kafka"))]
    topic: Option<String>,
    /// Extra librdkafka producer properties, e.g. `-X security.protocol=SASL_SSL` (repeatable).
    #[arg(short = 'X', long = "producer-option", value_name = "KEY=VALUE", value_parser = parse_kv)]
    producer_options: Vec<(String, String)>,
    /// Send each line at its arrival time in real time, with event times starting now (Kafka only).
    #[arg(long, requires = "brokers")]
    live: bool,
    /// Distinct page views (duplicates and malformed lines come on top).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    events: u64,
    /// Seed of the generator.
    #[arg(long, value_name = "S", default_value_t = 7)]
    seed: u64,
    /// Page views per second of event time.
    #[arg(long, value_name = "EV/S", default_value_t = 500.0)]
    rate: f64,
    /// Event time of the first view (RFC 3339); default 2026-01-01T00:00:00Z, or now with --live.
    #[arg(long, value_name = "TIME")]
    start: Option<EventTime>,
    /// Largest delay of an on-time view: views arrive out of order within this.
    #[arg(long, value_name = "DURATION", default_value = "3s")]
    disorder: Duration,
    /// Share of views arriving late (by --late-min ..= --late-max).
    #[arg(long, value_name = "SHARE", default_value_t = 0.01)]
    late_share: f64,
    /// Shortest delay of a late view.
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    late_min: Duration,
    /// Longest delay of a late view.
    #[arg(long, value_name = "DURATION", default_value = "12m")]
    late_max: Duration,
    /// Share of views delivered twice (same event id).
    #[arg(long, value_name = "SHARE", default_value_t = 0.001)]
    duplicate_share: f64,
    /// Malformed lines, as a share of views.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0005)]
    malformed_share: f64,
    /// Distinct users.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    users: u32,
    /// Distinct pages.
    #[arg(long, value_name = "N", default_value_t = 400)]
    pages: u32,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    File,
    Kafka,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl Args {
    fn config(&self) -> GenConfig {
        let default = GenConfig::default();
        let start = self.start.unwrap_or(if self.live {
            tidemark_stream::Clock::now(&tidemark_stream::SystemClock)
        } else {
            default.start
        });
        GenConfig {
            seed: self.seed,
            events: self.events,
            start,
            rate: self.rate,
            disorder: self.disorder,
            late_share: self.late_share,
            late_min: self.late_min,
            late_max: self.late_max,
            duplicate_share: self.duplicate_share,
            malformed_share: self.malformed_share,
            users: self.users,
            pages: self.pages,
            ..default
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if args.live && args.to != Target::Kafka {
        return Err(super::user_error("--live needs --to kafka (a file is written as fast as possible)".into()));
    }
    let config = args.config();
    let generation = config.generate()?;
    let stats = generation.stats();
    let to_stdout = args.to == Target::File && args.out.as_deref() == Some(std::path::Path::new("-"));
    let progress = progress_bar(generation.len() as u64, !to_stdout && std::io::stderr().is_terminal());
    let target = match args.to {
        Target::File => {
            let path = args.out.clone().expect("clap requires --out with --to file");
            write_file(&generation, &path, &progress)?;
            if to_stdout { "standard output".to_owned() } else { path.display().to_string() }
        }
        Target::Kafka => {
            let brokers = args.brokers.as_deref().expect("clap requires --brokers with --to kafka");
            let topic = args.topic.as_deref().expect("clap requires --topic with --to kafka");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(send_kafka(&generation, brokers, topic, &args.producer_options, args.live, &progress))?;
            format!("kafka {brokers} topic {topic}")
        }
    };
    progress.finish_and_clear();
    report(&stats, &target, args.json, to_stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar(len: u64, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style =
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:32}] {human_pos}/{human_len} lines ({eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message("generating");
    bar
}

/// Writes the lines to `path` (`-`: stdout).
pub fn write_file(
    generation: &Generation,
    path: &std::path::Path,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let tick = |n: u64| progress.set_position(n);
    if path == std::path::Path::new("-") {
        let stdout = std::io::stdout();
        let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
        return generation.write_jsonl(&mut out, tick).context("cannot write to standard output");
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("cannot create --out {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    generation.write_jsonl(&mut out, tick).with_context(|| format!("cannot write {}", path.display()))?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Produces every line to `topic`, keyed by user; waits until all are acknowledged.
async fn send_kafka(
    generation: &Generation,
    brokers: &str,
    topic: &str,
    options: &[(String, String)],
    live: bool,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000");
    for (k, v) in options {
        config.set(k, v);
    }
    let producer: FutureProducer =
        config.create().context("cannot create the Kafka producer (check --producer-option)")?;
    // With --live, line i goes out at (its arrival - the first arrival) after the start.
    let started = std::time::Instant::now();
    let mut buf = Vec::with_capacity(256);
    let mut pending = std::collections::VecDeque::new();
    let first = if generation.is_empty() { None } else { Some(generation.line_at(0, &mut Vec::new()).0) };
    for i in 0..generation.len() {
        buf.clear();
        let (arrival, _, user) = generation.line_at(i, &mut buf);
        if live && let Some(due) = first.and_then(|f| arrival.since(f)) {
            let due = due.to_std();
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        // The record's timestamp is the line's arrival, so a consumer's arrival clock (the record timestamp)
        // sees the simulated arrivals whether the topic is read live or as a backlog.
        let mut record = FutureRecord::to(topic)
            .key(user.as_bytes())
            .payload(buf.as_slice())
            .timestamp(arrival.as_micros().div_euclid(1000));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    // The local queue is full: wait for the oldest delivery, then retry the same record.
                    record = r;
                    match pending.pop_front() {
                        Some(d) => acknowledge(d, topic).await?,
                        None => tokio::time::sleep(StdDuration::from_millis(5)).await,
                    }
                }
                Err((e, _)) => return Err(e).with_context(|| format!("cannot send to topic {topic} on {brokers}")),
            }
        }
        while pending.len() > 50_000 {
            acknowledge(pending.pop_front().expect("non-empty"), topic).await?;
        }
        if i % 1_000 == 0 {
            progress.set_position(i as u64);
        }
    }
    progress.set_message("flushing");
    for d in pending {
        acknowledge(d, topic).await?;
    }
    producer.flush(rdkafka::util::Timeout::After(StdDuration::from_secs(60))).context("Kafka flush")?;
    progress.set_position(generation.len() as u64);
    Ok(())
}

async fn acknowledge(delivery: rdkafka::producer::DeliveryFuture, topic: &str) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e).with_context(|| format!("a record to topic {topic} was not delivered")),
        Err(_) => Err(anyhow::anyhow!("the Kafka producer shut down before delivering to {topic}")),
    }
}

fn report(stats: &GenStats, target: &str, json: bool, quiet: bool) -> anyhow::Result<()> {
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "target": target, "stats": stats }))?;
        if quiet {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        return Ok(());
    }
    let span = match (stats.first_ts, stats.last_ts) {
        (Some(a), Some(b)) => format!("event time {a} .. {b}"),
        _ => "no events".to_owned(),
    };
    let text = format!(
        "wrote {} lines to {target}: {} page views ({span}); {} late, {} duplicate deliveries, {} malformed, \
         {} out of order",
        stats.lines, stats.views, stats.late, stats.duplicates, stats.malformed, stats.out_of_order
    );
    // With --out -, stdout carries the lines: the summary goes to stderr.
    if quiet {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
