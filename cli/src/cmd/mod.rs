//! One module per subcommand.

pub mod backfill;
pub mod batch;
pub mod demo;
pub mod generate;
pub mod lateness;
pub mod reconcile;
pub mod store;
pub mod stream;
pub mod validate;

use std::path::Path;

use anyhow::Context as _;
use tidemark_core::{PipelineSpec, ValidSpec};

/// Reads and validates a spec file; relative paths in it are resolved against its folder.
pub fn load_spec(path: &Path) -> anyhow::Result<Result<ValidSpec, tidemark_core::SpecErrors>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read spec file {}", path.display()))?;
    let abs = std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let dir = abs.parent().map(Path::to_path_buf);
    Ok(PipelineSpec::parse(&text, &path.display().to_string(), dir.as_deref()))
}

/// Loads a spec that must be valid: its errors become a user error (exit code 2).
pub fn load_valid_spec(path: &Path) -> anyhow::Result<ValidSpec> {
    load_spec(path)?.map_err(|errors| tidemark_core::Error::Spec(errors).into())
}

/// An error in the command line: the user must fix it (exit code 2).
pub fn user_error(message: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(message))
}

/// A command-line mistake.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
