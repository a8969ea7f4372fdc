//! A repository in an S3-compatible bucket (AWS, Garage, Ceph's radosgw,
//! MinIO…), through the `object_store` crate: object `name` is key
//! `PREFIX/name`. A PUT is whole or not at all and durable once answered,
//! so there are no temporary objects and nothing to sync.
//!
//! What S3 does not give everywhere is worked around:
//! - a create that fails when the key exists (`If-None-Match: *`) is not
//!   honoured by every server (Garage ignores it): [`Backend::put_new`]
//!   asks first, then writes. Two writers racing on one chunk write the
//!   same bytes; manifests have random ids.
//! - a touch is a copy of the object onto itself (its time becomes now);
//!   where the server refuses that (AWS does without new metadata), the
//!   same bytes are written again.
//! - a removal that checks the time first cannot be one request: the
//!   object's time is looked at, then it is removed. A touch in between
//!   is lost; writers find that out before they commit (`crate::gc`).
//!
//! Everything blocks: each call runs on a small runtime of the backend's
//! own while the calling thread waits.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::{Backend, Listed, S3Options};
use crate::error::{Error, Result};

/// Objects in a bucket, under a prefix.
#[derive(Debug)]
pub struct S3 {
    store: std::sync::Arc<AmazonS3>,
    rt: tokio::runtime::Runtime,
    /// `s3://bucket/prefix`, for messages.
    url: String,
    /// `prefix/`, or empty.
    prefix: String,
}

/// Splits `s3://BUCKET[/PREFIX]` into the bucket and the prefix (without
/// slashes at either end).
pub fn parse_url(url: &str) -> Result<(String, String)> {
    let bad = |problem: &str| Error::invalid(format!("repository '{url}'"), problem);
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(bad(
            "the bucket must be 3 to 63 lower-case letters, digits, dots or hyphens",
        ));
    }
    let prefix = prefix.trim_matches('/');
    let prefix_ok = prefix.split('/').all(|p| {
        p.is_empty()
            || (p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'))
    }) && !prefix.contains("//");
    if !prefix_ok {
        return Err(bad(
            "the prefix must be printable parts without '.', '..' or empty ones",
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Makes sure TLS has its crypto provider (ring): reqwest is built
/// without one.
fn install_tls_provider() {
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    // Already installed (by us or by whoever else uses rustls): fine.
    let _ = provider.install_default();
}

impl S3 {
    /// The bucket and prefix `url` names (`s3://BUCKET[/PREFIX]`), with
    /// the credentials and region of the usual `AWS_*` variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL`…). Nothing is asked of
    /// the server yet.
    pub fn new(url: &str, opts: &S3Options) -> Result<S3> {
        let (bucket, prefix) = parse_url(url)?;
        install_tls_provider();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_conditional_put(S3ConditionalPut::Disabled);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let mut client = ClientOptions::new().with_connect_timeout(Duration::from_secs(10));
        if let Some(e) = &endpoint {
            // A server of one's own: path-style requests (no DNS per
            // bucket), plain HTTP when its URL says so.
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
            if e.starts_with("http://") {
                client = client.with_allow_http(true);
            }
        }
        let retry = RetryConfig {
            max_retries: opts.retries.unwrap_or(10),
            ..RetryConfig::default()
        };
        let store = b
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| Error::invalid(format!("repository '{url}'"), e.to_string()))?
            .into();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::invalid(format!("repository '{url}'"), e.to_string()))?;
        let shown = match prefix.as_str() {
            "" => format!("s3://{bucket}"),
            p => format!("s3://{bucket}/{p}"),
        };
        Ok(S3 {
            store,
            rt,
            url: shown,
            prefix: if prefix.is_empty() {
                prefix
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// The key of object `name`.
    fn key(&self, name: &str) -> Result<Path> {
        let ok = !name.is_empty()
            && name
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..");
        let bad = || Error::invalid(format!("object '{name}'"), "not an object name");
        if !ok {
            return Err(bad());
        }
        Path::parse(format!("{}{name}", self.prefix)).map_err(|_| bad())
    }

    /// Runs `op` on the store on this backend's runtime and waits for
    /// it: from any thread, one of another runtime's included.
    fn block<T, F>(&self, op: impl FnOnce(std::sync::Arc<AmazonS3>) -> F) -> object_store::Result<T>
    where
        F: Future<Output = object_store::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = op(self.store.clone());
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "S3",
                source: "the request was dropped unanswered".into(),
            })
        })
    }

    /// The error of `op` on object `name`.
    fn fail(&self, name: &str, op: &'static str) -> impl FnOnce(object_store::Error) -> Error {
        let (object, at) = (name.to_string(), format!("{}/{name}", self.url));
        move |e| match e {
            // Named as a folder's missing object is.
            object_store::Error::NotFound { .. } => Error::Missing { object },
            e => Error::Remote {
                at,
                op,
                problem: e.to_string(),
            },
        }
    }

    /// The objects under `prefix` (a string prefix of names) with their
    /// metadata.
    fn listing(&self, prefix: &str) -> Result<Vec<Listed>> {
        // object_store lists whole path segments: list the deepest folder
        // the prefix names, then keep what starts with it.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let under = format!("{}{base}", self.prefix);
        let under = under.trim_end_matches('/');
        let path = if under.is_empty() {
            None
        } else {
            Some(Path::parse(under).map_err(|e| Error::invalid(prefix, e.to_string()))?)
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .block(move |s| async move { s.list(path.as_ref()).try_collect().await })
            .map_err(self.fail(prefix, "list the objects"))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.as_ref().strip_prefix(&self.prefix)?.to_string();
                name.starts_with(prefix).then(|| Listed {
                    name,
                    size: m.size,
                    time: SystemTime::from(m.last_modified),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl Backend for S3 {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn put_new(&self, name: &str, data: &[u8]) -> Result<bool> {
        if self.exists(name)? {
            return Ok(false);
        }
        self.put(name, data)?;
        Ok(true)
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let key = self.key(name)?;
        let payload = PutPayload::from(data.to_vec());
        self.block(|s| async move { s.put(&key, payload).await })
            .map(|_| ())
            .map_err(self.fail(name, "write the object"))
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let key = self.key(name)?;
        self.block(|s| async move {
            let got = s.get(&key).await?;
            got.bytes().await
        })
        .map(|b| b.to_vec())
        .map_err(self.fail(name, "read the object"))
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let key = self.key(name)?;
        match self.block(|s| async move { s.head(&key).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.fail(name, "look at the object")(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.listing(prefix)?.into_iter().map(|l| l.name).collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        let key = self.key(name)?;
        match self.block(|s| async move { s.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(name, "delete the object")(e)),
        }
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn touch(&self, name: &str) -> Result<bool> {
        let key = self.key(name)?;
        match self.block(|s| async move { s.copy(&key, &key).await }) {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            // A server that will not copy an object onto itself: the
            // same bytes again.
            Err(_) => match self.get(name) {
                Ok(data) => self.put(name, &data).map(|()| true),
                Err(Error::Missing { .. }) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.listing(prefix)
    }

    fn delete_if_older(&self, name: &str, cutoff: SystemTime) -> Result<bool> {
        let key = self.key(name)?;
        let meta = match self.block(|s| async move { s.head(&key).await }) {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.fail(name, "look at the object")(e)),
        };
        if SystemTime::from(meta.last_modified) >= cutoff {
            return Ok(false);
        }
        self.delete(name)?;
        Ok(true)
    }

    fn sweep_leftovers(&self, _cutoff: SystemTime) -> Result<u64> {
        // A PUT leaves nothing behind when it fails.
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_url("s3://backups").unwrap(),
            ("backups".into(), "".into())
        );
        assert_eq!(
            parse_url("s3://backups/host-1/vm/").unwrap(),
            ("backups".into(), "host-1/vm".into())
        );
        for bad in [
            "backups",
            "s3://",
            "s3://ab",
            "s3://Backups",
            "s3://b_ckups",
            "s3://backups/a//b",
            "s3://backups/a/../b",
            "s3://backups/a b",
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
