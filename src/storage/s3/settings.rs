//! The S3 backend's settings: its flags and environment variables (present in every
//! build, so that a build without S3 refuses them by name instead of ignoring them),
//! and their checks, as far as they need no network.

use std::path::PathBuf;

#[cfg(feature = "s3")]
use super::S3Settings;

/// S3 flags and environment variables, flattened into the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// S3 bucket holding the cache.
    #[arg(long, env = "NIX_STORED_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// Key prefix inside the bucket (e.g. `cache` puts narinfos at `cache/<hash>.narinfo`).
    #[arg(long, env = "NIX_STORED_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// S3 endpoint URL, for stores other than AWS (e.g. `http://127.0.0.1:3900`).
    /// Unset: AWS_ENDPOINT_URL, else AWS itself.
    #[arg(long, env = "NIX_STORED_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region. Unset: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long, env = "NIX_STORED_S3_REGION")]
    pub s3_region: Option<String>,

    /// Path-style addressing (`endpoint/bucket/key`); false for virtual-hosted
    /// (`bucket.endpoint/key`).
    #[arg(long, env = "NIX_STORED_S3_PATH_STYLE", default_value = "true", value_parser = crate::config::values::Switch, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// AWS shared credentials file holding the S3 key (profile AWS_PROFILE, else
    /// `default`); takes precedence over AWS_ACCESS_KEY_ID and ~/.aws/credentials.
    #[arg(long, env = "NIX_STORED_S3_CREDENTIALS_FILE")]
    pub s3_credentials_file: Option<PathBuf>,

    /// Answer NAR downloads with a redirect to a presigned S3 URL instead of streaming
    /// them through the server.
    #[arg(long, env = "NIX_STORED_S3_REDIRECT", default_value = "false", value_parser = crate::config::values::Switch, action = clap::ArgAction::Set)]
    pub s3_redirect: bool,

    /// Seconds a presigned redirect URL stays valid (at most 604800, S3's limit).
    #[arg(long, env = "NIX_STORED_S3_REDIRECT_EXPIRY", default_value = "300")]
    pub s3_redirect_expiry: u64,

    /// Milliseconds a narinfo read from S3 may be answered from memory (0: never;
    /// see NIX_STORED_NARINFO_CACHE_SIZE). Bounds how long a narinfo replaced or
    /// deleted by another server can be served.
    #[arg(long, env = "NIX_STORED_S3_NARINFO_TTL", default_value = "5000")]
    pub s3_narinfo_ttl: u64,
}

/// An S3 setting no store would accept, named by its variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidS3Setting(String);

/// Longest validity of a presigned URL S3 accepts: 7 days.
#[cfg(feature = "s3")]
const MAX_REDIRECT_EXPIRY: u64 = 604_800;

#[cfg(feature = "s3")]
impl S3Args {
    /// The S3 settings, checked as far as that needs no network (the bucket itself is
    /// checked at start).
    pub fn settings(&self) -> Result<S3Settings, InvalidS3Setting> {
        let bucket = self.s3_bucket.clone().unwrap_or_default();
        if bucket.is_empty() {
            return Err(invalid(
                "NIX_STORED_STORAGE is s3 but NIX_STORED_S3_BUCKET is not set",
            ));
        }
        if !valid_bucket(&bucket) {
            return Err(invalid(format!(
                "NIX_STORED_S3_BUCKET {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
            )));
        }
        let prefix = self.s3_prefix.trim_matches('/').to_owned();
        if prefix
            .split('/')
            .any(|seg| prefix.contains("//") || seg == "." || seg == "..")
        {
            return Err(invalid(format!(
                "NIX_STORED_S3_PREFIX {:?} must be a plain path like cache or team/cache",
                self.s3_prefix
            )));
        }
        let endpoint = match self.s3_endpoint.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(e) => Some(endpoint(e)?),
        };
        let region = match self.s3_region.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) => Some(r.to_owned()),
        };
        if let Some(file) = &self.s3_credentials_file {
            std::fs::metadata(file).map_err(|e| {
                invalid(format!(
                    "NIX_STORED_S3_CREDENTIALS_FILE {}: cannot read it: {e}",
                    file.display()
                ))
            })?;
        }
        if self.s3_redirect_expiry == 0 || self.s3_redirect_expiry > MAX_REDIRECT_EXPIRY {
            return Err(invalid(
                "NIX_STORED_S3_REDIRECT_EXPIRY must be between 1 and 604800 seconds (7 days, S3's limit)",
            ));
        }
        Ok(S3Settings {
            bucket,
            prefix,
            endpoint,
            region,
            path_style: self.s3_path_style,
            credentials_file: self.s3_credentials_file.clone(),
            redirect: self
                .s3_redirect
                .then(|| std::time::Duration::from_secs(self.s3_redirect_expiry)),
            narinfo_ttl: std::time::Duration::from_millis(self.s3_narinfo_ttl),
        })
    }
}

#[cfg(feature = "s3")]
fn invalid(msg: impl Into<String>) -> InvalidS3Setting {
    InvalidS3Setting(msg.into())
}

/// S3's rules, loosely: what no store accepts is refused before any request.
#[cfg(feature = "s3")]
fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.'])
}

/// An endpoint URL with a scheme and a host, without its trailing `/`.
#[cfg(feature = "s3")]
fn endpoint(e: &str) -> Result<String, InvalidS3Setting> {
    let lower = e.to_ascii_lowercase();
    let host = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty() || host.starts_with('/') {
        return Err(invalid(format!(
            "NIX_STORED_S3_ENDPOINT {e:?} is not a URL like https://s3.example.com or http://127.0.0.1:3900"
        )));
    }
    Ok(e.trim_end_matches('/').to_owned())
}
