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

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Command::Init(init) => run_init(init),
    }
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
