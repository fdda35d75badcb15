//! `tidemark`: a thin binary over the library crates. Every subcommand lives in `cmd/`.

mod arrival;
mod cmd;
mod exit;
mod pageviews;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: with glibc's per-thread arenas a 10M-event `tidemark batch` run kept
/// about 1 GiB of freed polars buffers resident (peak 2.7 GiB split into parts; 1.8 GiB with mimalloc,
/// same speed; docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tidemark: real-time analytics that reconciles itself.
///
/// A pipeline spec (TOML) defines metrics once; the stream service computes provisional results from
/// Kafka, the batch layer recomputes them exactly from the raw archive, and the reconciler corrects the
/// serving store.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, propagate_version = true, arg_required_else_help = true)]
#[command(after_help = "Exit codes: 0 ok, 2 invalid input (fix the spec or flags), 3 external failure \
(broker, store, disk: retrying may help), 4 internal error (a bug: please report it), 5 contract breached \
(`reconcile --fail-on-breach`).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Validate(cmd::validate::Args),
    Batch(cmd::batch::Args),
    Store(cmd::store::Args),
    Stream(cmd::stream::Args),
    Reconcile(cmd::reconcile::Args),
    #[command(name = "gen")]
    Gen(cmd::generate::Args),
    Demo(cmd::demo::Args),
    Lateness(cmd::lateness::Args),
    Backfill(cmd::backfill::Args),
}

fn main() -> std::process::ExitCode {
    #[cfg(feature = "failpoints")]
    if let Err(e) = failpoints::setup() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => cmd::validate::run(&args),
        Command::Batch(args) => cmd::batch::run(&args),
        Command::Store(args) => cmd::store::run(&args),
        Command::Stream(args) => cmd::stream::run(&args),
        Command::Reconcile(args) => cmd::reconcile::run(&args),
        Command::Gen(args) => cmd::generate::run(&args),
        Command::Demo(args) => cmd::demo::run(&args),
        Command::Lateness(args) => cmd::lateness::run(&args),
        Command::Backfill(args) => cmd::backfill::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}

/// Named fail points (docs/reliability.md), compiled in only with the `failpoints` feature.
///
/// - `FAILPOINTS="name=actions;..."`: fail-rs actions (`return`, `sleep(ms)`, `panic`, `pause`, counts and
///   probabilities: `3*off->return`), as `fail::FailScenario::setup` reads them, but a malformed entry is a
///   usage error (exit 2) instead of a panic.
/// - `TIDEMARK_FAILPOINT_MARKS=1`: every fail point not configured by `FAILPOINTS` writes the line
///   `tidemark failpoint NAME HIT` to stderr each time it is reached (HIT counts from 1 per name).
/// - `TIDEMARK_FAILPOINT_HOLD=NAME@HIT`: with the marks, that hit holds its thread for 60 s after writing
///   its line, so that a test harness can kill the process exactly there.
#[cfg(feature = "failpoints")]
mod failpoints {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Every fail point in the workspace.
    pub const NAMES: [&str; 5] = [
        "delta.after_data_files_before_log_commit",
        "postgres.before_commit",
        "stream.after_commit_before_ack",
        "backfill.mid_chunk",
        "reconcile.after_read_before_merge",
    ];

    pub fn setup() -> Result<(), String> {
        let mut configured = Vec::new();
        if let Ok(all) = std::env::var("FAILPOINTS") {
            for entry in all.split(';').map(str::trim).filter(|e| !e.is_empty()) {
                let (name, actions) =
                    entry.split_once('=').ok_or_else(|| format!("FAILPOINTS: {entry:?} is not name=actions"))?;
                let name = name.trim();
                if !NAMES.contains(&name) {
                    return Err(format!("FAILPOINTS: no fail point is named {name:?} (known: {})", NAMES.join(", ")));
                }
                fail::cfg(name, actions.trim()).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
                configured.push(name.to_owned());
            }
        }
        if std::env::var("TIDEMARK_FAILPOINT_MARKS").is_ok_and(|v| v == "1") {
            let hold = match std::env::var("TIDEMARK_FAILPOINT_HOLD") {
                Ok(h) => {
                    let parsed = h.split_once('@').and_then(|(n, hit)| Some((n.to_owned(), hit.parse::<u64>().ok()?)));
                    Some(parsed.ok_or_else(|| format!("TIDEMARK_FAILPOINT_HOLD: {h:?} is not NAME@HIT"))?)
                }
                Err(_) => None,
            };
            for name in NAMES.into_iter().filter(|n| !configured.iter().any(|c| c == n)) {
                let hits = AtomicU64::new(0);
                let hold_at = hold.as_ref().filter(|(n, _)| n == name).map(|(_, hit)| *hit);
                fail::cfg_callback(name, move || {
                    let hit = hits.fetch_add(1, Ordering::SeqCst) + 1;
                    // one write per line, so that lines of concurrent threads do not interleave
                    let _ = std::io::stderr().write_all(format!("tidemark failpoint {name} {hit}\n").as_bytes());
                    if hold_at == Some(hit) {
                        std::thread::sleep(std::time::Duration::from_secs(60));
                    }
                })?;
            }
        }
        Ok(())
    }
}
