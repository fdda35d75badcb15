//! `tidemark validate`: check a pipeline spec and print it normalized.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use crate::exit;

/// Check a pipeline spec; print it with every default filled in, or every error found.
///
/// Secrets (Kafka client passwords, the Postgres password) are printed as <redacted>.
// The doc comment is the `--help` text too, so `<redacted>` stays literal there.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  tidemark validate --spec examples/pageviews.toml\n  \
tidemark validate --spec pipeline.toml --format json | jq .metrics\n\n\
Exit code 0 if the spec is valid, 2 if not (each error names the file, the field and what is wrong).")]
pub struct Args {
    /// The pipeline spec (TOML).
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// Output format of the normalized spec.
    #[arg(long, value_enum, default_value_t = Format::Toml)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Toml,
    Json,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    match super::load_spec(&args.spec)? {
        Ok(spec) => {
            match args.format {
                Format::Toml => print!("{}", spec.to_toml()),
                Format::Json => println!("{}", serde_json::to_string_pretty(spec.spec())?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            let n = errors.0.len();
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{n} error{} in {}", if n == 1 { "" } else { "s" }, args.spec.display());
            Ok(ExitCode::from(exit::USER))
        }
    }
}
