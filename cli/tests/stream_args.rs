//! `tidemark stream` flags: out-of-range values are refused by name before anything starts.

mod common;

use common::tidemark;

#[test]
fn max_flushes_in_flight_must_be_between_1_and_8() {
    for bad in ["0", "9", "two"] {
        let (code, _, err) =
            tidemark(&["stream", "--spec", "/nonexistent.toml", "--max-flushes-in-flight", bad, "--listen", "off"]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--max-flushes-in-flight"), "{bad}: {err}");
    }
    let (code, out, _) = tidemark(&["stream", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--max-flushes-in-flight <N>") && out.contains("[default: 2]"), "{out}");
}
