//! The dashboard and the alert rules against a real Prometheus (Debian's `prometheus` package, installed by
//! scripts/setup.sh) scraping a running `tidemark stream` that consumes a 2-partition topic on the real
//! tansu broker (issue 22):
//! - every PromQL expression of docs/grafana/tidemark.json returns data (Grafana's `$job` and
//!   `$__rate_interval` substituted);
//! - every rule of docs/prometheus/tidemark-rules.yml is evaluated by that Prometheus without error;
//! - `promtool check rules` accepts the file and `promtool test rules` shows the lag and watermark alerts
//!   firing under a stalled consumer (and not before).

mod stream_common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidemark_core::EventTime;
use tidemark_stream::testing::Broker;

const PARTITIONS: i32 = 2;
const PER_PARTITION: i64 = 3_000;

/// A Prometheus binary: `TIDEMARK_PROMETHEUS_BIN` (the folder holding `prometheus` and `promtool`), else PATH,
/// else Debian's /usr/bin.
fn prometheus_tool(name: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::env::var_os("TIDEMARK_PROMETHEUS_BIN")
        .map(|d| vec![PathBuf::from(d)])
        .or_else(|| std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()))
        .unwrap_or_default();
    let found = dirs.iter().map(|d| d.join(name)).find(|p| p.exists());
    let bin = found.unwrap_or_else(|| PathBuf::from("/usr/bin").join(name));
    assert!(bin.exists(), "{name} not found (run scripts/setup.sh, which installs the prometheus package)");
    bin
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Per partition: events 20 ms apart with small disorder over the last minute of wall time (so the watermark
/// is current: no alert may fire), some far behind (late ledger), duplicates and malformed records, so every
/// counter of the dashboard moves.
fn payloads(p: i32) -> Vec<Vec<u8>> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let base = i64::try_from(now.as_micros()).unwrap() - PER_PARTITION * 20_000;
    let mut out = Vec::new();
    for i in 0..PER_PARTITION {
        let mut t = base + i * 20_000 - (i * 7_919 % 2_000_000);
        if i % 200 == 150 {
            t -= 300_000_000; // 5 min behind: beyond the allowed lateness
        }
        let ts = EventTime::from_micros(t).unwrap();
        let line =
            format!(r#"{{"id":"p{p}-{i}","ts":"{ts}","page":"/p{}","user":"u{}","ms":{}}}"#, i % 7, i % 97, i % 500);
        if i % 300 == 7 {
            out.push(line.clone().into_bytes()); // duplicate
        }
        if i % 400 == 3 {
            out.push(b"{\"id\": 1".to_vec()); // malformed
        }
        out.push(line.into_bytes());
    }
    out
}

fn spec(dir: &Path, bootstrap: &str) -> PathBuf {
    let url = |s: &str| format!("file://{}", dir.join(s).display());
    let text = format!(
        r#"
version = 1
name = "promtest"
[source]
type = "kafka"
brokers = "{bootstrap}"
topic = "pageviews"
group = "tidemark-promtest"
[event]
id = "id"
time = {{ field = "ts", format = "rfc3339" }}
dimensions = ["page", "user"]
values = {{ ms = "int" }}
[time]
watermark_delay = "5s"
allowed_lateness = "30s"
idle_timeout = "1h"
[[metrics]]
name = "views"
dimensions = ["page"]
window = {{ type = "tumbling", size = "1m" }}
aggregates = [{{ name = "n", fn = "count" }}, {{ name = "ms", fn = "sum", field = "ms" }}]
[stores]
raw_archive = "{raw}"
serving = "{serving}"
dead_letter = "{dead}"
batch_view = "{batch}"
"#,
        raw = url("raw"),
        serving = url("serving"),
        dead = url("dead"),
        batch = url("batch"),
    );
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0): the status line and the body.
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next().unwrap_or_default().to_owned(), body.to_owned()))
}

/// An instant query's `data.result`, or the error Prometheus answered.
fn query(port: u16, promql: &str) -> Result<Vec<serde_json::Value>, String> {
    let q: String = url::form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let (status, body) = get(port, &format!("/api/v1/query?query={q}")).ok_or("no answer")?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Every `expr` of the Grafana dashboard.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(repo().join("docs/grafana/tidemark.json")).unwrap();
    let mut out = Vec::new();
    walk(&serde_json::from_str(&text).unwrap(), &mut out);
    out
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn promtool_accepts_the_rules_and_the_stalled_consumer_fires_the_lag_and_watermark_alerts_issue_22() {
    let dir = repo().join("docs/prometheus");
    let check = Command::new(prometheus_tool("promtool"))
        .args(["check", "rules", "tidemark-rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && out.contains("SUCCESS: 10 rules found"), "{out}");
    let test = Command::new(prometheus_tool("promtool"))
        .args(["test", "rules", "tidemark-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&test.stdout), String::from_utf8_lossy(&test.stderr));
    assert!(test.status.success() && out.contains("SUCCESS"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_and_every_rule_evaluates_against_a_real_prometheus_issue_22() {
    let broker = Broker::start().await;
    broker.create_topic("pageviews", PARTITIONS).await;
    for p in 0..PARTITIONS {
        broker.produce("pageviews", p, &payloads(p)).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec(tmp.path(), broker.bootstrap());
    let (metrics_port, prom_port) = (free_port(), free_port());
    let _stream = Killed(
        Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["stream", "--spec", spec.to_str().unwrap(), "--flush-interval", "100ms"])
            .args(["--listen", &format!("127.0.0.1:{metrics_port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("stream.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: \
         tidemark\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
        rules = repo().join("docs/prometheus/tidemark-rules.yml").display()
    );
    std::fs::write(tmp.path().join("prometheus.yml"), config).unwrap();
    let _prometheus = Killed(
        Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", tmp.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = |name: &str| std::fs::read_to_string(tmp.path().join(name)).unwrap_or_default();
    // the service consumed every record, and Prometheus has scraped it for a while since (rates need two
    // samples in their window)
    let total = (PER_PARTITION as usize) * PARTITIONS as usize;
    wait_for("the service to consume the topic", Duration::from_secs(120), || {
        query(prom_port, "sum(tidemark_consumed_total)")
            .ok()
            .and_then(|r| r.first().and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok())))
            >= Some(total as f64)
    });
    wait_for("ten scrapes", Duration::from_secs(60), || {
        query(prom_port, r#"count_over_time(up{job="tidemark"}[1m]) >= 10"#).is_ok_and(|r| !r.is_empty())
    });

    let mut empty = Vec::new();
    let exprs = dashboard_exprs();
    assert_eq!(exprs.len(), 24, "the dashboard's queries");
    for e in &exprs {
        let promql = e.replace("$__rate_interval", "1m").replace("$job", "tidemark");
        match query(prom_port, &promql) {
            Ok(r) if r.is_empty() => empty.push(promql),
            Ok(_) => {}
            Err(err) => panic!("{promql}: {err}\n{}", log("prometheus.log")),
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data: {empty:#?}\nstream log:\n{}", log("stream.log"));

    // every rule evaluated (at least once since the service came up) without error
    let rules = || -> Vec<serde_json::Value> {
        let (_, body) = get(prom_port, "/api/v1/rules").expect("rules answer");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect()
    };
    wait_for("every rule to be evaluated", Duration::from_secs(30), || {
        rules().iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")))
    });
    let rules = rules();
    assert_eq!(rules.len(), 10, "{rules:#?}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r:#}");
        // nothing is wrong with this service: no alert pending or firing
        assert_eq!(r["state"], "inactive", "{r:#}");
    }
}
