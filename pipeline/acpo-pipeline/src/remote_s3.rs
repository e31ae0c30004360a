//! S3-compatible object storage as a run-cache remote (`s3://bucket/prefix`), through the
//! `object_store` crate (Apache Arrow's, the store polars uses).
//!
//! Layout as in a directory remote (module `remote`): `<prefix>/runs/<key>.json` and
//! `<prefix>/objects/ab/cdef..`. A PUT is atomic in S3 (an object is visible whole or not at
//! all), so objects need no temporary names; `remote::push` writes every object before the run
//! entry that names them. Credentials and the endpoint come from the environment, never from
//! the config file: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (default
//! `us-east-1`), and `AWS_ENDPOINT_URL` for a server other than AWS (plain `http://` is allowed
//! for such an endpoint). Every request is bounded in time (connect 5 s, request 60 s, two
//! retries within 20 s), so an unreachable server is an error naming the URL, not a hang.

use crate::error::{Error, Result};
use crate::remote::Store;
use crate::runcache::is_digest;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use std::path::Path;
use std::time::Duration;

/// Objects larger than this are uploaded in parts.
const MULTIPART_FROM: u64 = 64 << 20;
/// The size of one part of a multipart upload.
const PART: usize = 16 << 20;

/// A remote in an S3 bucket.
pub struct S3Store {
    store: Box<dyn ObjectStore>,
    /// `s3://bucket/prefix`, as configured.
    url: String,
    prefix: String,
    /// Runs the store's async calls; one thread, created with the store.
    rt: tokio::runtime::Runtime,
}

impl S3Store {
    /// Opens remote `name` at `url` (`s3://bucket[/prefix]`), configured from the environment.
    pub fn open(name: &str, url: &str) -> Result<S3Store> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!(
                "remote `{name}`: `{url}`: expected s3://BUCKET or s3://BUCKET/PREFIX"
            )));
        }
        let missing: Vec<&str> = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
            .into_iter()
            .filter(|v| std::env::var_os(v).is_none_or(|x| x.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Usage(format!(
                "remote `{name}` ({url}) needs {} in the environment (credentials are never read \
                 from the config file)",
                missing.join(" and ")
            )));
        }
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .ok();
        let options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60))
            .with_allow_http(
                endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            );
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(e) = &endpoint {
            builder = builder.with_endpoint(e);
        }
        let store = builder
            .build()
            .map_err(|e| Error::Usage(format!("remote `{name}` ({url}): {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io(format!("the runtime of remote `{name}`"), e))?;
        Ok(S3Store {
            store: Box::new(store),
            url: url.trim_end_matches('/').to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            rt,
        })
    }

    fn path(&self, rel: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Never a name outside the remote's layout, whatever a damaged entry names.
    fn object(&self, hash: &str) -> ObjectPath {
        if !is_digest(hash) {
            return self.path("objects/invalid");
        }
        self.path(&format!("objects/{}/{}", &hash[..2], &hash[2..]))
    }

    fn run(&self, key: &str) -> ObjectPath {
        let key = if is_digest(key) { key } else { "invalid" };
        self.path(&format!("runs/{key}.json"))
    }

    /// A failed request, naming the object's URL.
    fn err(&self, what: &ObjectPath, e: object_store::Error) -> Error {
        let rel = what
            .as_ref()
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(what.as_ref())
            .trim_start_matches('/');
        Error::Remote {
            url: format!("{}/{rel}", self.url),
            message: e.to_string(),
        }
    }

    /// The bytes of `at`, or `None` when there is no such object.
    fn get_bytes(&self, at: &ObjectPath) -> Result<Option<Vec<u8>>> {
        let r = self.rt.block_on(async {
            match self.store.get(at).await {
                Ok(g) => g.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        r.map_err(|e| self.err(at, e))
    }
}

impl Store for S3Store {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn get_run(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(&self.run(key))
    }

    fn put_run(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let at = self.run(key);
        let payload = PutPayload::from(bytes.to_vec());
        self.rt
            .block_on(self.store.put(&at, payload))
            .map(|_| ())
            .map_err(|e| self.err(&at, e))
    }

    fn has_object(&self, hash: &str) -> Result<bool> {
        let at = self.object(hash);
        match self.rt.block_on(self.store.head(&at)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(&at, e)),
        }
    }

    fn get_object(&self, hash: &str, dst: &Path) -> Result<()> {
        let at = self.object(hash);
        let bytes = self.get_bytes(&at)?.ok_or_else(|| Error::Remote {
            url: format!("{}/objects/{}", self.url, hash),
            message: "no such object (the run entry names an object the remote lacks)".into(),
        })?;
        std::fs::write(dst, &bytes).map_err(|e| Error::io(dst, e))
    }

    fn put_object(&self, hash: &str, src: &Path) -> Result<()> {
        let at = self.object(hash);
        let size = std::fs::metadata(src).map_err(|e| Error::io(src, e))?.len();
        if size < MULTIPART_FROM {
            let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
            return self
                .rt
                .block_on(self.store.put(&at, PutPayload::from(bytes)))
                .map(|_| ())
                .map_err(|e| self.err(&at, e));
        }
        // Large outputs go up in parts; S3 shows the object only when the last part is
        // completed, and an aborted upload leaves nothing visible.
        let r: std::result::Result<(), object_store::Error> = self.rt.block_on(async {
            use std::io::Read;
            let upload = self.store.put_multipart(&at).await?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
            let mut f = std::fs::File::open(src).map_err(|e| object_store::Error::Generic {
                store: "local file",
                source: Box::new(e),
            })?;
            let mut buf = vec![0u8; PART];
            loop {
                let n = f.read(&mut buf).map_err(|e| object_store::Error::Generic {
                    store: "local file",
                    source: Box::new(e),
                })?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4).await?;
                w.write(&buf[..n]);
            }
            w.finish().await.map(|_| ())
        });
        r.map_err(|e| self.err(&at, e))
    }

    fn list_runs(&self) -> Result<Vec<String>> {
        let at = self.path("runs");
        let listed = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&at)))
            .map_err(|e| self.err(&at, e))?;
        Ok(crate::remote::run_keys(
            listed.objects.iter().filter_map(|o| o.location.filename()),
        ))
    }
}
