//! `tidemark`: a thin binary over the library crates. Every subcommand lives in `cmd/`.

mod cmd;
mod exit;
mod pageviews;

use clap::{Parser, Subcommand};

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
