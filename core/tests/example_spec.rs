//! The shipped example spec parses and normalizes as documented.

use tidemark_core::PipelineSpec;

#[test]
fn the_example_spec_is_valid() {
    let text = include_str!("../../examples/pageviews.toml");
    let spec = PipelineSpec::parse(text, "examples/pageviews.toml", Some(std::path::Path::new("/srv/tm")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.metrics().len(), 3);
    assert_eq!(spec.spec().stores.raw_archive, "file:///srv/tm/data/raw");
    let printed = spec.to_toml();
    // printing the normalized spec and parsing it again is a fixed point
    let again = PipelineSpec::parse(&printed, "printed", None).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(again.spec(), spec.spec());
}
