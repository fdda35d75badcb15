//! One module per subcommand.

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
