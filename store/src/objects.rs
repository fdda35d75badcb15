//! Object stores by URL, the same way for every table and file tidemark reads or writes.
//!
//! - `file:///path` (or an absolute path): the local filesystem.
//! - `s3://bucket/prefix`: AWS S3 or an S3-compatible server. Credentials, region and endpoint come from the
//!   standard environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...), then from explicit options, which win.
//!   Delta commits use conditional writes (`If-None-Match`), which AWS S3 and most S3-compatible servers
//!   support, so concurrent writers are safe without a locking service.
//! - `memory://host/path`: an in-memory store shared by everything in this process that names the same
//!   host, so a table written there can be reopened and read (tests, benchmarks). Gone when the process ends.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Once, OnceLock};

use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig, object_store_factories};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::memory::InMemory;
use object_store::path::Path;
use url::Url;

use crate::error::{Error, Result};

/// The in-memory stores of this process, one per `memory://` host.
fn memory_store(host: &str) -> Arc<InMemory> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = stores.lock().unwrap_or_else(|p| p.into_inner());
    stores.entry(host.to_owned()).or_insert_with(|| Arc::new(InMemory::new())).clone()
}

/// The path inside the store that `url` names (percent-decoded, without leading `/`).
fn url_path(url: &Url) -> Result<Path> {
    Path::from_url_path(url.path()).map_err(|e| Error::invalid("object store url", format!("{url}: {e}")))
}

/// deltalake's factory for `memory://`, backed by the shared stores of this process.
#[derive(Debug, Default)]
struct SharedMemoryFactory;

impl ObjectStoreFactory for SharedMemoryFactory {
    fn parse_url_opts(&self, url: &Url, _config: &StorageConfig) -> deltalake::DeltaResult<(ObjectStoreRef, Path)> {
        let path = url_path(url).map_err(|e| deltalake::DeltaTableError::InvalidTableLocation(e.to_string()))?;
        Ok((memory_store(url.host_str().unwrap_or("")), path))
    }
}

/// Registers the `s3://` and shared `memory://` handlers with deltalake (once per process). Every function of
/// this crate that opens a Delta table calls it first.
pub fn register_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        object_store_factories().insert(
            Url::parse("memory://").expect("a valid URL"),
            Arc::new(SharedMemoryFactory) as Arc<dyn ObjectStoreFactory>,
        );
    });
}

/// The object store `url` names and the path inside it. `options` are object_store configuration keys
/// (e.g. `aws_endpoint`, `aws_access_key_id`, `aws_allow_http`); for `s3://` they override the
/// environment.
pub fn open(url: &Url, options: &HashMap<String, String>) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let failed = |source| Error::ObjectStore { url: url.to_string(), source };
    match url.scheme() {
        "memory" => Ok((memory_store(url.host_str().unwrap_or("")), url_path(url)?)),
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in options {
                let key = AmazonS3ConfigKey::from_str(&key.to_ascii_lowercase()).map_err(failed)?;
                builder = builder.with_config(key, value);
            }
            Ok((Arc::new(builder.build().map_err(failed)?), url_path(url)?))
        }
        _ => {
            let (store, path) = object_store::parse_url_opts(url, options.iter()).map_err(failed)?;
            Ok((Arc::from(store), path))
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    #[tokio::test]
    async fn memory_urls_of_one_host_share_a_store_and_hosts_are_separate() {
        let url = Url::parse("memory://objects-test/a/b").unwrap();
        let (store, path) = open(&url, &HashMap::new()).unwrap();
        assert_eq!(path.as_ref(), "a/b");
        store.put(&path.clone().join("x"), PutPayload::from_static(b"1")).await.unwrap();
        let (again, _) = open(&url, &HashMap::new()).unwrap();
        let got = again.get(&path.clone().join("x")).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"1");
        let other = Url::parse("memory://objects-test-other/a/b").unwrap();
        let (other, _) = open(&other, &HashMap::new()).unwrap();
        assert!(other.get(&path.join("x")).await.is_err());
    }

    #[test]
    fn an_unknown_s3_option_is_named_in_the_error() {
        let url = Url::parse("s3://bucket/prefix").unwrap();
        let opts = HashMap::from([("aws_no_such_key".to_owned(), "1".to_owned())]);
        let err = open(&url, &opts).expect_err("refused");
        assert!(err.to_string().contains("aws_no_such_key"), "{err}");
    }
}
