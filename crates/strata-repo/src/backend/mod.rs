//! Where a repository's objects live. An object has a name of
//! `/`-separated parts (`chunks/ab/ab12…`) and bytes that never change
//! once it is there: a writer creates it whole or not at all. A folder on
//! a local disk ([`LocalDir`]) is one such place; an object store bucket
//! is another.

mod local;
#[cfg(feature = "s3")]
mod s3;

pub use local::LocalDir;
#[cfg(feature = "s3")]
pub use s3::{parse_url, S3};

/// How to reach an S3 bucket.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// The server's URL (`http://127.0.0.1:3900`); none for AWS itself.
    pub endpoint: Option<String>,
    /// How many times a failed request is tried again (10 when none).
    pub retries: Option<usize>,
}

use std::time::SystemTime;

use crate::error::{Error, Result};

impl S3Options {
    /// The options for `location` if it is a bucket (`s3://`) on server
    /// `endpoint` (none: AWS), its retries from `STRATA_S3_RETRIES` where
    /// set (a value that is not a number is refused, naming the
    /// variable); for a folder, none and nothing read.
    pub fn from_env(location: &str, endpoint: Option<String>) -> Result<S3Options> {
        if !location.starts_with("s3://") {
            return Ok(S3Options::default());
        }
        let retries = match std::env::var("STRATA_S3_RETRIES") {
            Ok(v) => Some(v.trim().parse().map_err(|_| {
                Error::invalid(
                    "STRATA_S3_RETRIES",
                    format!("'{v}' is not a number of retries"),
                )
            })?),
            Err(_) => None,
        };
        Ok(S3Options { endpoint, retries })
    }
}

/// The place `location` names: `s3://BUCKET[/PREFIX]` (with `s3` for
/// its server and retries), else a local folder, made when `create`
/// (`repo init`), else required to be there.
pub fn at(location: &str, s3: &S3Options, create: bool) -> Result<Box<dyn Backend>> {
    if location.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return Ok(Box::new(S3::new(location, s3)?));
        #[cfg(not(feature = "s3"))]
        {
            let _ = s3;
            return Err(crate::Error::invalid(
                format!("repository '{location}'"),
                "this build has no S3 support (strata-repo's feature s3)",
            ));
        }
    }
    if location.contains("://") {
        return Err(crate::Error::invalid(
            format!("repository '{location}'"),
            "a folder or an s3://BUCKET/PREFIX URL is a repository; no other URL is",
        ));
    }
    Ok(Box::new(if create {
        LocalDir::new(location)?
    } else {
        LocalDir::open(location)?
    }))
}

/// An object as listed with its size and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was made or last touched.
    pub time: SystemTime,
}

/// A place for a repository's objects.
pub trait Backend: Send + Sync {
    /// Where it is, for messages (a folder, a bucket URL).
    fn describe(&self) -> String;

    /// Creates object `name` holding `data`, unless it exists already (as
    /// a content-addressed object, it then holds the same bytes): true
    /// when it was created. Whole or not at all.
    fn put_new(&self, name: &str, data: &[u8]) -> Result<bool>;

    /// Creates or replaces object `name` with `data`, whole or not at all.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;

    /// The bytes of object `name` ([`crate::Error::Missing`] when it is
    /// not there).
    fn get(&self, name: &str) -> Result<Vec<u8>>;

    /// Whether object `name` is there.
    fn exists(&self, name: &str) -> Result<bool>;

    /// The names of the objects whose names start with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Removes object `name` (not there: nothing to do).
    fn delete(&self, name: &str) -> Result<()>;

    /// Makes every object created so far durable (before the object that
    /// makes them part of a backup is written).
    fn sync(&self) -> Result<()>;

    /// Marks object `name` as used now (its time is what garbage
    /// collection's grace period counts from): false when it is not there.
    fn touch(&self, name: &str) -> Result<bool>;

    /// The objects whose names start with `prefix`, sorted, each with its
    /// size and the time it was made or last touched.
    fn list_meta(&self, prefix: &str) -> Result<Vec<Listed>>;

    /// Removes object `name` unless it was touched at or after `cutoff`
    /// (checked so that a touch racing the removal either keeps the
    /// object or finds it gone): true when it was removed.
    fn delete_if_older(&self, name: &str, cutoff: SystemTime) -> Result<bool>;

    /// Removes what killed writers left behind (temporary files) older
    /// than `cutoff`; how many.
    fn sweep_leftovers(&self, cutoff: SystemTime) -> Result<u64>;
}
