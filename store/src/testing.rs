//! Test harness (cargo feature `testing`, for dev-dependencies): one throwaway Postgres server per test
//! binary, a fresh database per test; likewise an S3-compatible server ([`s3_bucket`]) with a fresh bucket
//! per test.
//!
//! ```text
//! let db = tidemark_store::testing::postgres().await?;      // starts the server on first use
//! let store = PostgresStore::connect(&db.conninfo, "serving").await?;
//! ```
//!
//! The server runs from the Debian binaries (`/usr/lib/postgresql/<v>/bin`, or `TIDEMARK_PG_BIN`), with its
//! data directory in a temp dir and listening only on a Unix socket there. `initdb` refuses to run as
//! root, so as root the server runs as the `postgres` user (`runuser`). A watchdog shell process stops
//! the server and deletes the directory when the test process exits, even if it is killed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, Result};

/// The running server.
#[derive(Debug)]
pub struct TestServer {
    /// The temp dir (data dir is `dir/data`, socket in `dir`).
    pub dir: PathBuf,
    /// The port number in the socket's name.
    pub port: u16,
    /// libpq connection string of the `postgres` database.
    pub admin_conninfo: String,
}

/// A fresh database on the test server.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// The database name.
    pub name: String,
    /// libpq connection string for it.
    pub conninfo: String,
}

static SERVER: OnceLock<std::result::Result<TestServer, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn pg_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("TIDEMARK_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    // 15 or newer: the serving store writes with MERGE
    for v in ["18", "17", "16", "15"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    Err(Error::Harness(
        "no Postgres 15+ binaries under /usr/lib/postgresql/<15..18>/bin (run scripts/setup.sh, or set TIDEMARK_PG_BIN)"
            .into(),
    ))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs `program args` as the postgres user when we are root.
fn run_pg(root: bool, program: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().map_err(|e| Error::Harness(format!("running {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(Error::Harness(format!(
            "{} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn start() -> Result<TestServer> {
    let bin = pg_bin()?;
    let root = is_root();
    let dir = tempfile::Builder::new()
        .prefix("tidemark-pg-")
        .tempdir()
        .map_err(|e| Error::Harness(format!("temp dir: {e}")))?
        .keep();
    let dir_s = dir.to_string_lossy().into_owned();
    if root {
        let st = Command::new("chown")
            .args(["postgres:postgres", &dir_s])
            .status()
            .map_err(|e| Error::Harness(format!("chown: {e}")))?;
        if !st.success() {
            return Err(Error::Harness(format!("chown postgres {dir_s} failed")));
        }
    }
    let data = dir.join("data");
    let data_s = data.to_string_lossy().into_owned();
    run_pg(root, &bin.join("initdb"), &["-D", &data_s, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])?;
    let port: u16 = 5432;
    let mut opts = format!(
        "-k {dir_s} -c listen_addresses='' -p {port} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    );
    // extra server settings, e.g. for benchmarks: `TIDEMARK_PG_SETTINGS="shared_buffers=2GB max_wal_size=8GB"`
    for setting in std::env::var("TIDEMARK_PG_SETTINGS").unwrap_or_default().split_whitespace() {
        opts.push_str(&format!(" -c {setting}"));
    }
    let log = dir.join("server.log").to_string_lossy().into_owned();
    run_pg(root, &bin.join("pg_ctl"), &["-D", &data_s, "-l", &log, "-o", &opts, "-w", "start"])?;
    // stop the server and delete the directory when this process ends, however it ends
    let pg_ctl = bin.join("pg_ctl").to_string_lossy().into_owned();
    let stop = if root {
        format!("runuser -u postgres -- {pg_ctl} -D {data_s} -m immediate stop")
    } else {
        format!("{pg_ctl} -D {data_s} -m immediate stop")
    };
    watchdog(&format!("{stop} >/dev/null 2>&1; rm -rf {dir_s}"))?;
    let admin_conninfo = format!("host={dir_s} port={port} user=postgres dbname=postgres");
    Ok(TestServer { dir, port, admin_conninfo })
}

/// The server of this test binary, started on first use.
pub fn server() -> Result<&'static TestServer> {
    SERVER.get_or_init(|| start().map_err(|e| e.to_string())).as_ref().map_err(|e| Error::Harness(e.clone()))
}

/// A fresh, empty database on the test server (started on first use).
pub async fn postgres() -> Result<TestDb> {
    let server = tokio::task::spawn_blocking(|| server().map(|s| s.admin_conninfo.clone()))
        .await
        .map_err(|e| Error::Harness(format!("starting postgres: {e}")))??;
    let name = format!("t{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .map_err(Error::pg("connecting to the test server"))?;
    let task = tokio::spawn(conn);
    // the name is generated above from digits and letters only
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.map_err(Error::pg("creating a test database"))?;
    drop(client);
    let _ = task.await;
    let conninfo = server.replace("dbname=postgres", &format!("dbname={name}"));
    Ok(TestDb { name, conninfo })
}

/// A throwaway S3-compatible server (moto's `moto_server` from PyPI: `TIDEMARK_MOTO`, else the venv that
/// scripts/setup.sh makes, else `moto_server` on the PATH), one per test binary, on a free loopback port. Stopped when the test
/// process exits, however it exits.
#[derive(Debug)]
pub struct TestS3 {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

/// A fresh, empty bucket on the test S3 server.
#[derive(Debug, Clone)]
pub struct TestBucket {
    /// `s3://<bucket>`.
    pub url: String,
    /// object_store / deltalake storage options that reach the server (endpoint, static keys, region, HTTP).
    pub options: std::collections::HashMap<String, String>,
    /// The same settings as the standard AWS environment variables, for a `tidemark` subprocess.
    pub env: Vec<(String, String)>,
}

static S3: OnceLock<std::result::Result<TestS3, String>> = OnceLock::new();
static NEXT_BUCKET: AtomicU32 = AtomicU32::new(0);

fn start_s3() -> Result<TestS3> {
    // scripts/setup.sh installs moto into this venv
    let venv = std::env::var("HOME").map(|h| format!("{h}/.cache/tidemark/moto-5.2.1/bin/moto_server"));
    let program = match (std::env::var("TIDEMARK_MOTO"), venv) {
        (Ok(p), _) => p,
        (_, Ok(v)) if Path::new(&v).exists() => v,
        _ => "moto_server".to_owned(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Harness(format!("finding a free port: {e}")))?
        .port();
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::Harness(format!("starting {program} (pip install \"moto[server]\", or set TIDEMARK_MOTO): {e}"))
        })?;
    watchdog(&format!("kill {} 2>/dev/null", child.id()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(Error::Harness(format!("{program} did not listen on 127.0.0.1:{port} within 30 s")));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(TestS3 { endpoint: format!("http://127.0.0.1:{port}") })
}

/// The S3 server of this test binary, started on first use.
pub fn s3_server() -> Result<&'static TestS3> {
    S3.get_or_init(|| start_s3().map_err(|e| e.to_string())).as_ref().map_err(|e| Error::Harness(e.clone()))
}

/// Sends one bodiless HTTP/1.1 request and returns the status code.
fn http_status(addr: &str, method: &str, path: &str) -> Result<u16> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| Error::Harness(format!("connecting {addr}: {e}")))?;
    write!(conn, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .map_err(|e| Error::Harness(format!("request to {addr}: {e}")))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(|e| Error::Harness(format!("reply from {addr}: {e}")))?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Harness(format!("unreadable reply from {addr}: {reply:.80}")))
}

/// A fresh, empty bucket on the test S3 server (started on first use).
pub async fn s3_bucket() -> Result<TestBucket> {
    let server = tokio::task::spawn_blocking(|| s3_server().map(|s| s.endpoint.clone()))
        .await
        .map_err(|e| Error::Harness(format!("starting the S3 server: {e}")))??;
    let name = format!("tidemark-{}-{}", std::process::id(), NEXT_BUCKET.fetch_add(1, Ordering::Relaxed));
    let addr = server.trim_start_matches("http://").to_owned();
    let path = format!("/{name}");
    let status = tokio::task::spawn_blocking(move || http_status(&addr, "PUT", &path))
        .await
        .map_err(|e| Error::Harness(format!("creating a bucket: {e}")))??;
    if status != 200 {
        return Err(Error::Harness(format!("creating bucket {name}: HTTP {status}")));
    }
    let settings = [
        ("aws_endpoint", "AWS_ENDPOINT_URL", server.as_str()),
        ("aws_access_key_id", "AWS_ACCESS_KEY_ID", "tidemark-test"),
        ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "tidemark-test-secret"),
        ("aws_region", "AWS_REGION", "us-east-1"),
        ("aws_allow_http", "AWS_ALLOW_HTTP", "true"),
    ];
    Ok(TestBucket {
        url: format!("s3://{name}"),
        options: settings.iter().map(|(k, _, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        env: settings.iter().map(|(_, k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    })
}

/// Runs the shell command `cleanup` once this process has exited, however it exits (a test binary killed
/// mid-run too), so that servers the harness started do not outlive it.
fn watchdog(cleanup: &str) -> Result<()> {
    let script = format!("while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {cleanup}", pid = std::process::id());
    Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| Error::Harness(format!("watchdog: {e}")))
}
