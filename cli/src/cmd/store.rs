//! `tidemark store ...`: manage the serving store.

use std::path::PathBuf;
use std::process::ExitCode;

use tidemark_core::StoreLocation;
use tidemark_store::{DEFAULT_SCHEMA, PostgresStore};

/// Manage the serving store named by a spec.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Init(InitArgs),
    Compact(CompactArgs),
}

/// Create or migrate the serving store's tables (idempotent; safe to run concurrently).
///
/// Postgres: applies the versioned migrations in schema `tidemark`. Delta Lake: creates the serving and
/// audit tables under the URL.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  tidemark store init --spec pipeline.toml\n  \
tidemark store init --spec pipeline.toml --print-roles | psql \"$ADMIN_DSN\"\n\n\
--print-roles prints (for Postgres) the least-privilege roles: tidemark_stream may write speed rows only, \
tidemark_reconciler writes corrections, tidemark_reader reads.")]
pub struct InitArgs {
    /// The pipeline spec (TOML); its `stores.serving` names the store.
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// After migrating, print the SQL that sets up the least-privilege roles (Postgres only).
    #[arg(long)]
    print_roles: bool,
}

/// Compact a Delta serving table's small files, then delete what nothing references any more.
///
/// Every flush of the stream service is a commit, and many commits leave many small Parquet files:
/// compaction rewrites them into larger ones in one commit (readers see the same rows throughout). The
/// vacuum then deletes, once older than --retention, the data files no longer in the table and the
/// checkpoint blobs and progress records that no pipeline's recorded progress names. Postgres needs
/// neither (autovacuum).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  tidemark store compact --spec pipeline.toml\n  \
tidemark store compact --spec pipeline.toml --retention 1h --target-size 268435456\n\n\
--retention must exceed the longest write (a write's files exist before its commit); run it from cron, \
e.g. hourly, beside the service.")]
pub struct CompactArgs {
    /// The pipeline spec (TOML); its `stores.serving` names the store.
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Target size of a compacted file in bytes (default: deltalake's, 100 MiB).
    #[arg(long, value_name = "BYTES")]
    target_size: Option<u64>,
    /// Delete only unreferenced files older than this (e.g. 30m, 1h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    retention: std::time::Duration,
    /// Compact only; delete nothing.
    #[arg(long)]
    no_vacuum: bool,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::Init(init) => run_init(init),
        Command::Compact(compact) => run_compact(compact),
    }
}

fn run_compact(args: &CompactArgs) -> anyhow::Result<ExitCode> {
    let spec = super::load_valid_spec(&args.spec)?;
    let StoreLocation::Delta(url) = spec.serving_store() else {
        return Err(super::user_error(
            "store compact applies to a Delta serving store; Postgres reclaims space with autovacuum".into(),
        ));
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = tidemark_store::DeltaStoreConfig::new(url.clone()).build().await?;
        let (removed, added) = store.optimize(args.target_size).await?;
        println!("compacted {url}: {removed} files rewritten into {added}");
        if !args.no_vacuum {
            let v = store.vacuum(args.retention).await?;
            println!(
                "vacuumed: {} data files and {} checkpoint blobs / progress records deleted (older than {})",
                v.data_files,
                v.state_objects,
                humantime::format_duration(args.retention)
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn run_init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let spec = super::load_valid_spec(&args.spec)?;
    let location = spec.serving_store();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        tidemark_store::open(&location).await?.init().await?;
        match &location {
            StoreLocation::Postgres(dsn) => {
                let pg = PostgresStore::connect(dsn, DEFAULT_SCHEMA).await?;
                let versions = pg.migrations().await?;
                eprintln!(
                    "serving store ready: Postgres {} schema {DEFAULT_SCHEMA}, migrations {versions:?}",
                    tidemark_core::spec::redact_dsn(dsn)
                );
                if args.print_roles {
                    println!("{}", pg.role_setup_sql());
                }
            }
            StoreLocation::Delta(url) => {
                eprintln!("serving store ready: Delta tables under {url}");
                if args.print_roles {
                    return Err(super::user_error("--print-roles applies to a Postgres serving store only".into()));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
