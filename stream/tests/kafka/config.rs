//! Option resolution and forced settings (no broker needed: building fails before connecting).

use tidemark_core::spec::ClientOption;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_resolved_and_forced_settings_cannot_be_overridden() {
    let cfg = config("127.0.0.1:1", "t", "g").option("enable.auto.commit", ClientOption::Literal("true".into()));
    let err = cfg.build().unwrap_err();
    assert_eq!(err.actor(), tidemark_core::Actor::User);
    assert!(!err.retryable());
    let msg = err.to_string();
    assert!(msg.contains("source.options.\"enable.auto.commit\"") && msg.contains("tidemark sets"), "{msg}");

    let var = unique("TIDEMARK_TEST_UNSET").replace('-', "_");
    let err = config("127.0.0.1:1", "t", "g")
        .option("sasl.password", ClientOption::Env { env: var.clone() })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains(&format!("environment variable {var} is not set")), "{err}");
    assert!(err.to_string().contains("sasl.password"), "{err}");

    let dir = std::env::temp_dir().join(unique("tidemark-secret"));
    std::fs::write(&dir, "hunter2-secret\n").unwrap();
    // librdkafka rejects this property (no TLS in this build): the error names it, never the secret.
    let err = config("127.0.0.1:1", "t", "g")
        .option("ssl.key.password", ClientOption::File { file: dir.display().to_string() })
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("source.options.\"ssl.key.password\"") && !msg.contains("hunter2"), "{msg}");
    // A non-secret value librdkafka rejects is named with librdkafka's reason.
    let err = config("127.0.0.1:1", "t", "g")
        .option("fetch.wait.max.ms", ClientOption::Literal("soon".into()))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("source.options.\"fetch.wait.max.ms\"") && msg.contains("Invalid value"), "{msg}");
    let err = config("127.0.0.1:1", "t", "g")
        .option("sasl.password", ClientOption::File { file: "/nonexistent/tidemark".into() })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cannot read /nonexistent/tidemark"), "{err}");
    let debug = format!("{:?}", config("b", "t", "g").option("sasl.password", ClientOption::Literal("hunter2".into())));
    assert!(!debug.contains("hunter2") && debug.contains("<redacted>"), "{debug}");
    std::fs::remove_file(&dir).unwrap();
}
