//! Which storage backend holds the cache, and its settings.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use super::{err, ConfigError};
use crate::storage::s3::settings::S3Args;
#[cfg(feature = "s3")]
use crate::storage::s3::S3Settings;

/// The backends, as NIX_STORED_STORAGE names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// The NIX_STORED_PATH directory.
    Fs,
    /// An S3 bucket (refused by builds without the `s3` feature).
    S3,
}

/// The storage flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Where objects live: `fs` (the NIX_STORED_PATH directory) or `s3` (a bucket).
    /// Unset: `s3` when NIX_STORED_S3_BUCKET is set, else `fs`.
    #[arg(
        long,
        env = "NIX_STORED_STORAGE",
        ignore_case = true,
        hide_possible_values = true
    )]
    pub storage: Option<StorageKind>,

    /// The S3 backend's settings.
    #[command(flatten)]
    pub s3: S3Args,
}

/// Where the cache's objects live.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A local directory (NIX_STORED_PATH).
    Fs(PathBuf),
    /// An S3 bucket.
    #[cfg(feature = "s3")]
    S3(S3Settings),
}

impl StorageArgs {
    /// The storage settings: S3 when asked for (or when a bucket is named), else the
    /// directory at `path`.
    pub(super) fn select(&self, path: &Path) -> Result<StorageConfig, ConfigError> {
        let kind =
            match self.storage {
                Some(StorageKind::Fs) if self.s3.s3_bucket.is_some() => return Err(err(
                    "NIX_STORED_S3_BUCKET is set but NIX_STORED_STORAGE is fs; unset one of them",
                )),
                Some(kind) => kind,
                None if self.s3.s3_bucket.is_some() => StorageKind::S3,
                None => StorageKind::Fs,
            };
        match kind {
            StorageKind::Fs => Ok(StorageConfig::Fs(path.to_owned())),
            StorageKind::S3 => self.s3(),
        }
    }

    #[cfg(feature = "s3")]
    fn s3(&self) -> Result<StorageConfig, ConfigError> {
        self.s3
            .settings()
            .map(StorageConfig::S3)
            .map_err(|e| err(e.to_string()))
    }

    /// Without the `s3` feature, S3 settings are an error rather than silently unused.
    #[cfg(not(feature = "s3"))]
    fn s3(&self) -> Result<StorageConfig, ConfigError> {
        Err(err(
            "S3 storage is configured (NIX_STORED_S3_BUCKET or NIX_STORED_STORAGE=s3) but this binary was built without the s3 feature",
        ))
    }
}

impl std::fmt::Display for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Fs(p) => write!(f, "fs:{}", p.display()),
            #[cfg(feature = "s3")]
            StorageConfig::S3(s) => write!(f, "s3://{}/{}", s.bucket, s.prefix),
        }
    }
}
