//! The bucket's client: built from the settings and the environment, then checked
//! once against the bucket before the server starts.

use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};

use super::{credentials, is_not_found, S3Settings, S3Storage};

/// Makes ring, the server's own crypto, the process's rustls provider: reqwest's rustls
/// has none of its own (object_store's default would be aws-lc-rs, a second stack).
/// Called before every client is built; the second call changes nothing.
pub(super) fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl S3Storage {
    /// The client alone, without contacting the bucket.
    pub(super) fn build(settings: S3Settings) -> std::result::Result<Self, String> {
        install_ring();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&settings.bucket);
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(creds) = credentials::resolve(settings.credentials_file.as_deref())? {
            builder = builder
                .with_access_key_id(creds.key_id)
                .with_secret_access_key(creds.secret);
            if let Some(token) = creds.token {
                builder = builder.with_token(token);
            }
        }
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        if let Some(endpoint) = &endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            builder = if settings.path_style {
                builder.with_endpoint(endpoint)
            } else {
                // object_store expects the bucket in a virtual-hosted endpoint.
                builder.with_endpoint(virtual_hosted(endpoint, &settings.bucket)?)
            };
        }
        builder = builder.with_virtual_hosted_style_request(!settings.path_style);
        let plain_http = endpoint
            .as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
        if let Some(unsigned) = unsigned_payload(
            plain_http,
            std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_some(),
        ) {
            builder = builder.with_unsigned_payload(unsigned);
        }
        builder = builder
            .with_client_options(
                ClientOptions::new()
                    // An endpoint written with http:// is a deliberate choice (a
                    // store on the same host or network).
                    .with_allow_http(plain_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    // A multi-GiB NAR streams for as long as it takes; a stalled
                    // store is noticed by the client, whose download stops.
                    .with_timeout_disabled()
                    .with_pool_idle_timeout(Duration::from_secs(30)),
            )
            // Transient errors are retried briefly; a store that stays unreachable
            // fails the request (and the start) within seconds, not minutes.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
            });
        let store = builder
            .build()
            .map_err(|e| format!("S3 configuration: {e}"))?;
        let key_prefix = if settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", settings.prefix)
        };
        Ok(S3Storage {
            store,
            settings,
            key_prefix,
        })
    }

    pub(super) async fn check(&self, store_dir: &str) -> std::result::Result<(), String> {
        let bucket = &self.settings.bucket;
        let info = self.path("nix-cache-info")?;
        let explain = |e: &object_store::Error| {
            match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => format!(
                "S3 bucket {bucket}: the credentials were refused (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, NIX_STORED_S3_CREDENTIALS_FILE and NIX_STORED_S3_REGION): {e}"
            ),
            object_store::Error::NotFound { .. } => format!(
                "S3 bucket {bucket} does not exist (check NIX_STORED_S3_BUCKET and NIX_STORED_S3_ENDPOINT): {e}"
            ),
            _ => format!(
                "S3 bucket {bucket} is unreachable or refused the request (check NIX_STORED_S3_ENDPOINT and NIX_STORED_S3_REGION): {e}"
            ),
        }
        };
        match self.store.get(&info).await {
            Ok(r) => {
                let text = r.bytes().await.map_err(|e| explain(&e))?;
                let text = String::from_utf8_lossy(&text);
                if let Some(dir) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("StoreDir:"))
                    .map(str::trim)
                {
                    if dir != store_dir {
                        tracing::warn!(
                            "S3 bucket {bucket}: nix-cache-info says StoreDir {dir}, this server uses {store_dir}"
                        );
                    }
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                // The bucket answers and the key may read; NoSuchBucket also lands
                // here, and the write below tells the two apart.
                let body = PutPayload::from(format!("StoreDir: {store_dir}\n"));
                match self.store.put(&info, body).await {
                    Ok(_) => Ok(()),
                    Err(e @ object_store::Error::PermissionDenied { .. }) => {
                        // Read-only credentials can serve a bucket filled by others.
                        tracing::warn!(
                            "S3 bucket {bucket}: cannot write nix-cache-info ({e}); uploads will be refused by the bucket"
                        );
                        Ok(())
                    }
                    Err(e) => Err(explain(&e)),
                }
            }
            Err(e) => Err(explain(&e)),
        }
    }
}

/// Whether to leave request bodies out of their SigV4 signatures (`None`: as
/// `AWS_UNSIGNED_PAYLOAD`, which the user set, says). Over HTTPS, TLS already makes
/// sure the store receives the bytes sent, so hashing every part for its signature
/// (and the store hashing it again to check) only costs CPU on both sides; AWS's own
/// SDKs leave uploads unsigned over HTTPS for that reason. Over `http://` the
/// signature is the only check that the body arrived as the server verified it: kept.
fn unsigned_payload(plain_http: bool, set_by_user: bool) -> Option<bool> {
    (!set_by_user).then_some(!plain_http)
}

/// `https://s3.example.com` → `https://bucket.s3.example.com`.
fn virtual_hosted(endpoint: &str, bucket: &str) -> std::result::Result<String, String> {
    let (scheme, host) = endpoint.split_once("://").ok_or_else(|| {
        format!("NIX_STORED_S3_ENDPOINT {endpoint:?} is not a URL like https://s3.example.com")
    })?;
    Ok(format!("{scheme}://{bucket}.{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosted_endpoints_name_the_bucket() {
        assert_eq!(
            virtual_hosted("https://s3.example.com", "cache").unwrap(),
            "https://cache.s3.example.com"
        );
        assert!(virtual_hosted("s3.example.com", "cache").is_err());
    }

    #[test]
    fn payloads_are_signed_over_http_only_unless_the_user_chose() {
        assert_eq!(unsigned_payload(false, false), Some(true));
        assert_eq!(unsigned_payload(true, false), Some(false));
        assert_eq!(unsigned_payload(true, true), None);
        assert_eq!(unsigned_payload(false, true), None);
    }
}
