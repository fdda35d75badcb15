//! Option resolution, forced settings and TLS/SASL settings (no broker needed: librdkafka validates its
//! configuration, including the TLS files, when the client is created, before connecting).

use std::path::{Path, PathBuf};
use std::process::Command;

use tidemark_core::spec::ClientOption;
use tidemark_stream::KafkaConfig;

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
    // librdkafka rejects the client (the key password is read with a key that does not exist): the error
    // never shows the secret.
    let err = config("127.0.0.1:1", "t", "g")
        .option("security.protocol", ClientOption::Literal("SSL".into()))
        .option("ssl.key.location", ClientOption::Literal("/nonexistent/tidemark.key".into()))
        .option("ssl.key.password", ClientOption::File { file: dir.display().to_string() })
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("source.options") && msg.contains("ssl") && !msg.contains("hunter2"), "{msg}");
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

/// A fresh folder under the temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (also usable as the CA that trusts it) and its
/// unencrypted key, made with the `openssl` command: `(cert.pem, key.pem)` in `dir`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    (cert, key)
}

/// SASL_SSL with SCRAM-SHA-512, the password from the environment and a CA file.
fn sasl_ssl(ca: &Path, password_var: &str) -> KafkaConfig {
    config("127.0.0.1:1", "t", "g")
        .option("security.protocol", ClientOption::Literal("SASL_SSL".into()))
        .option("sasl.mechanisms", ClientOption::Literal("SCRAM-SHA-512".into()))
        .option("sasl.username", ClientOption::Literal("tidemark".into()))
        .option("sasl.password", ClientOption::Env { env: password_var.to_owned() })
        .option("ssl.ca.location", ClientOption::Literal(ca.display().to_string()))
}

/// The variable holding the SASL password in the TLS/SASL test (set only in the child process it runs in).
const PASSWORD_VAR: &str = "TIDEMARK_TEST_SASL_PASSWORD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_sasl_settings_build_a_consumer_and_never_show_the_password() {
    // The password comes from the environment; setting a variable in this multi-threaded process is
    // unsound, so the test reruns itself in a child process that has it.
    let Ok(secret) = std::env::var(PASSWORD_VAR) else {
        let name = "config::tls_and_sasl_settings_build_a_consumer_and_never_show_the_password";
        let out = Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(PASSWORD_VAR, format!("s3cr3t-{}", unique("pw")))
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the child run failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "the child ran no test:\n{stdout}");
        return;
    };
    let var = PASSWORD_VAR;
    let dir = TempDir::new("tidemark-tls");
    let (ca, _key) = self_signed(&dir.0);

    let cfg = sasl_ssl(&ca, var);
    let debug = format!("{cfg:?}");
    assert!(!debug.contains(&secret) && debug.contains(var), "{debug}");
    // librdkafka loads the CA file and checks the SASL mechanism when the client is created.
    let source = cfg.build().unwrap_or_else(|e| panic!("SASL_SSL with SCRAM-SHA-512 refused: {e}"));
    let debug = format!("{source:?}");
    assert!(!debug.contains(&secret), "{debug}");
    source.close().await;

    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        for protocol in ["SASL_SSL", "SASL_PLAINTEXT"] {
            let source = sasl_ssl(&ca, var)
                .option("security.protocol", ClientOption::Literal(protocol.into()))
                .option("sasl.mechanisms", ClientOption::Literal(mechanism.into()))
                .build()
                .unwrap_or_else(|e| panic!("{protocol} with {mechanism} refused: {e}"));
            source.close().await;
        }
    }
    // Plain TLS with a client certificate (mutual TLS).
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let source = config("127.0.0.1:1", "t", "g")
        .option("security.protocol", ClientOption::Literal("SSL".into()))
        .option("ssl.ca.location", ClientOption::Literal(ca.display().to_string()))
        .option("ssl.certificate.location", ClientOption::Literal(cert.display().to_string()))
        .option("ssl.key.location", ClientOption::Literal(key.display().to_string()))
        .option("ssl.endpoint.identification.algorithm", ClientOption::Literal("https".into()))
        .build()
        .unwrap_or_else(|e| panic!("SSL with a client certificate refused: {e}"));
    source.close().await;

    // The CA file is really read: one that is not PEM is refused at build time, and the error names the
    // problem but never the password.
    let bogus = dir.0.join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let err = sasl_ssl(&bogus, var).build().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ssl.ca.location") && !msg.contains(&secret), "{msg}");
    let err = sasl_ssl(&dir.0.join("missing.pem"), var).build().unwrap_err();
    let msg = format!("{err} / {err:?}");
    assert!(msg.contains("ssl.ca.location") && !msg.contains(&secret), "{msg}");
    // A mechanism librdkafka does not know is refused by name; GSSAPI (Kerberos) is not built in.
    for mechanism in ["NTLM", "GSSAPI"] {
        let err = sasl_ssl(&ca, var)
            .option("sasl.mechanisms", ClientOption::Literal(mechanism.into()))
            .build()
            .err()
            .unwrap_or_else(|| panic!("{mechanism} accepted"));
        let msg = format!("{err} / {err:?}");
        assert!(msg.contains(mechanism) && !msg.contains(&secret), "{msg}");
    }
    // A literal password is redacted in Debug and never appears in an error either.
    let literal = sasl_ssl(&bogus, var).option("sasl.password", ClientOption::Literal(secret.clone()));
    let debug = format!("{literal:?}");
    assert!(!debug.contains(&secret) && debug.contains("<redacted>"), "{debug}");
    let err = literal.build().unwrap_err();
    let msg = format!("{err} / {err:?}");
    assert!(!msg.contains(&secret), "{msg}");

    // Statistics (the lag metric's source) are on by default and may be set or turned off.
    for interval in ["0", "250"] {
        let source = config("127.0.0.1:1", "t", "g")
            .option("statistics.interval.ms", ClientOption::Literal(interval.into()))
            .build()
            .unwrap();
        source.close().await;
    }
}
