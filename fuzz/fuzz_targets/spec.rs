//! Any text through the pipeline-spec parser: a valid spec or errors that each name what is wrong; never
//! a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::PipelineSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = PipelineSpec::parse(text, "fuzz.toml", None) {
        assert!(!e.to_string().is_empty());
    }
});
