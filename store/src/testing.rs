//! Test harness: one throwaway Postgres server per test binary, a fresh database per test.
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
    for v in ["17", "16", "15", "14"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    Err(Error::Harness("no Postgres binaries under /usr/lib/postgresql/*/bin; set TIDEMARK_PG_BIN".into()))
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
    let opts = format!(
        "-k {dir_s} -c listen_addresses='' -p {port} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    );
    let log = dir.join("server.log").to_string_lossy().into_owned();
    run_pg(root, &bin.join("pg_ctl"), &["-D", &data_s, "-l", &log, "-o", &opts, "-w", "start"])?;
    // stop the server and delete the directory when this process ends, however it ends
    let pg_ctl = bin.join("pg_ctl").to_string_lossy().into_owned();
    let stop = if root {
        format!("runuser -u postgres -- {pg_ctl} -D {data_s} -m immediate stop")
    } else {
        format!("{pg_ctl} -D {data_s} -m immediate stop")
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir_s}",
        pid = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::Harness(format!("watchdog: {e}")))?;
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
