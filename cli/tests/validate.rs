//! `tidemark validate` end to end: the binary, its output and its exit codes.

mod common;

use common::tidemark;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pageviews.toml");

#[test]
fn accepts_the_example_and_prints_it_normalized() {
    let (code, out, err) = tidemark(&["validate", "--spec", EXAMPLE]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("late_policy = \"update\""), "{out}");
    assert!(out.contains("tolerance = \"exact\""), "defaults are filled in:\n{out}");
    let dir = std::path::Path::new(EXAMPLE).parent().unwrap().canonicalize().unwrap();
    assert!(out.contains(&format!("raw_archive = \"file://{}/data/raw\"", dir.display())), "{out}");

    let (code, json, _) = tidemark(&["validate", "--spec", EXAMPLE, "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["metrics"][2]["window"]["gap"], "30s");
}

#[test]
fn rejects_an_invalid_spec_with_exit_code_2_naming_file_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replace(r#"slide = "1m""#, r#"slide = "2m""#)
        .replace(r#"name = "user_sessions""#, r#"name = "User Sessions""#);
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = tidemark(&["validate", "--spec", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "nothing printed to stdout on failure: {out}");
    let shown = path.display().to_string();
    assert!(
        err.contains(&format!("error: {shown}: metrics[1].window.size: size (5m) must be a multiple of slide (2m)")),
        "{err}"
    );
    assert!(
        err.contains(&format!("error: {shown}: metrics[2].name: \"User Sessions\" must be a lowercase identifier")),
        "{err}"
    );
    assert!(err.contains("2 errors in"), "{err}");
}

#[test]
fn a_missing_spec_file_is_a_user_error() {
    let (code, _, err) = tidemark(&["validate", "--spec", "/nonexistent/spec.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read spec file /nonexistent/spec.toml"), "{err}");
}

#[test]
fn help_shows_examples() {
    let (code, out, _) = tidemark(&["validate", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("tidemark validate --spec examples/pageviews.toml"), "{out}");
}
