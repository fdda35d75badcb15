//! Canary secrets (issue 8): passwords given through an environment variable, a secret file and a Postgres
//! DSN never appear in what tidemark prints — `validate` output, the stream service's logs at trace level
//! (librdkafka's own debug lines included), error messages — nor in anything it writes to disk.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tidemark;

const ENV_CANARY: &str = "canary-env-7f3a9c41";
const FILE_CANARY: &str = "canary-file-51be02d7";
const DSN_CANARY: &str = "canary-dsn-c0ffee99";

fn write_spec(dir: &Path, serving: &str) -> String {
    std::fs::write(dir.join("key-password"), format!("{FILE_CANARY}\n")).unwrap();
    let text = format!(
        r#"
version = 1
name = "canary"
[source]
type = "kafka"
brokers = "127.0.0.1:9"
topic = "pageviews"
group = "canary"
[source.options]
"security.protocol" = "sasl_plaintext"
"sasl.mechanism" = "PLAIN"
"sasl.username" = "tidemark"
"sasl.password" = {{ env = "TIDEMARK_CANARY_PASSWORD" }}
"ssl.key.password" = {{ file = "{key}" }}
"debug" = "all"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page"]
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}]
[stores]
raw_archive = "{root}/raw"
serving = "{serving}"
dead_letter = "{root}/dead"
batch_view = "{root}/batch"
"#,
        key = dir.join("key-password").display(),
        root = dir.display(),
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn assert_no_canary(what: &str, text: &str) {
    for canary in [ENV_CANARY, FILE_CANARY, DSN_CANARY] {
        assert!(!text.contains(canary), "{what} shows the secret {canary}:\n{text}");
    }
}

/// Every file under `dir` except the secret file itself.
fn assert_no_canary_on_disk(dir: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n != "key-password") {
                let bytes = std::fs::read(&path).unwrap();
                assert_no_canary(&path.display().to_string(), &String::from_utf8_lossy(&bytes));
                files += 1;
            }
        }
    }
    assert!(files > 1, "the run wrote files to check ({files})");
}

#[test]
fn validate_never_prints_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &format!("postgres://tidemark:{DSN_CANARY}@127.0.0.1:9/db"));
    for format in ["toml", "json"] {
        let (code, out, err) = tidemark(&["validate", "--spec", &spec, "--format", format]);
        assert_eq!(code, 0, "{err}");
        assert_no_canary("validate output", &(out.clone() + &err));
        assert!(out.contains("sasl.password") && out.contains("TIDEMARK_CANARY_PASSWORD"), "{out}");
    }
}

#[test]
fn a_failing_postgres_connection_does_not_show_the_dsn_password() {
    let dir = tempfile::tempdir().unwrap();
    // key=value form as well as the URL form
    for dsn in [
        format!("postgres://tidemark:{DSN_CANARY}@127.0.0.1:9/db"),
        format!("host=127.0.0.1 port=9 user=tidemark password={DSN_CANARY} dbname=db"),
    ] {
        let spec = write_spec(dir.path(), &dsn);
        for args in [vec!["store", "init", "--spec", &spec], vec!["stream", "--spec", &spec, "--listen", "off"]] {
            let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
                .args(&args)
                .env("RUST_LOG", "trace")
                .env("TIDEMARK_CANARY_PASSWORD", ENV_CANARY)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "an unreachable store is an external failure: {text}");
            assert!(text.contains("127.0.0.1"), "the error names the server: {text}");
            assert_no_canary(&format!("{args:?}"), &text);
        }
    }
}

#[test]
fn the_stream_service_at_trace_level_never_logs_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), &format!("{}/serving", dir.path().display()));
    for format in ["text", "json"] {
        // a trace log is large: to a file, not a pipe the test would have to drain
        let log_path = dir.path().join(format!("service-{format}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["stream", "--spec", &spec, "--listen", "off", "--log-format", format])
            .env("RUST_LOG", "trace")
            .env("TIDEMARK_CANARY_PASSWORD", ENV_CANARY)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // the broker address is closed: librdkafka retries and logs while the service waits for it
        let started = Instant::now();
        let read = || String::from_utf8_lossy(&std::fs::read(&log_path).unwrap()).into_owned();
        while !read().contains("Connect to ipv4#127.0.0.1:9 failed") {
            assert!(child.try_wait().unwrap().is_none(), "the service keeps running while the broker is down");
            assert!(started.elapsed() < Duration::from_secs(60), "no connection attempt logged in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        // SIGTERM: commit and exit 0
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let code = child.wait().unwrap().code();
        let text = read();
        let tail: String = text.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        assert_eq!(code, Some(0), "log tail:\n{tail}");
        // librdkafka's own debug lines reached the log, its configuration dump among them
        assert!(text.contains("librdkafka"), "no librdkafka lines in the log; tail:\n{tail}");
        assert!(text.contains("sasl.username"), "librdkafka's configuration is not in the log");
        assert!(text.contains("sasl.password = [redacted]"), "librdkafka redacts what it dumps");
        assert_no_canary(&format!("the {format} log"), &text);
    }
    assert_no_canary_on_disk(dir.path());
}
