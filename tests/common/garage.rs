//! The Garage (S3) server the S3-backend runs use, and an S3 client of the tests' own
//! to inspect it. Only with the `s3` feature.

use super::*;

/// The Garage server of this run, and an S3 client of the tests' own to inspect it.
pub struct Garage {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    rt: tokio::runtime::Runtime,
    client: object_store::aws::AmazonS3,
}

/// The shared Garage: the one scripts/test.sh started (`NIX_STORED_TEST_S3_*`), or
/// else one started by scripts/garage.sh for this test binary, stopped when it exits.
pub fn garage() -> &'static Garage {
    static GARAGE: std::sync::OnceLock<Garage> = std::sync::OnceLock::new();
    GARAGE.get_or_init(|| {
        let var = |k: &str| std::env::var(format!("NIX_STORED_TEST_S3_{k}")).ok();
        let vars: Vec<(String, String)> = if var("ENDPOINT").is_some() {
            ["ENDPOINT", "REGION", "BUCKET", "KEY_ID", "SECRET"]
                .iter()
                .map(|k| (k.to_string(), var(k).unwrap_or_default()))
                .collect()
        } else {
            let dir = temp_dir("garage");
            let out = Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/garage.sh"))
                .arg("start")
                .arg(&dir)
                .arg(std::process::id().to_string())
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/garage.sh");
            assert!(out.status.success(), "scripts/garage.sh start failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("NIX_STORED_TEST_S3_"))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no NIX_STORED_TEST_S3_{k} from Garage"))
        };
        let (endpoint, region, bucket, key_id, secret) = (
            get("ENDPOINT"),
            get("REGION"),
            get("BUCKET"),
            get("KEY_ID"),
            get("SECRET"),
        );
        // reqwest's rustls has no provider of its own: ring, as in the server.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_region(&region)
            .with_bucket_name(&bucket)
            .with_access_key_id(&key_id)
            .with_secret_access_key(&secret)
            .with_allow_http(true)
            .build()
            .expect("S3 client for the tests");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Garage {
            endpoint,
            region,
            bucket,
            key_id,
            secret,
            rt,
            client,
        }
    })
}

impl Garage {
    /// The environment that points a server at `prefix` in the test bucket.
    pub fn server_env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("NIX_STORED_S3_BUCKET", self.bucket.as_str()),
            ("NIX_STORED_S3_PREFIX", prefix),
            ("NIX_STORED_S3_ENDPOINT", self.endpoint.as_str()),
            ("NIX_STORED_S3_REGION", self.region.as_str()),
            ("AWS_ACCESS_KEY_ID", self.key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn path(prefix: &str, key: &str) -> object_store::path::Path {
        object_store::path::Path::parse(format!("{prefix}/{key}")).expect("object path")
    }

    /// Keys below `prefix`, relative to it, sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        let root = object_store::path::Path::from(prefix);
        let objects: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(object_store::ObjectStore::list(&self.client, Some(&root)).try_collect())
            .expect("list the test bucket");
        let mut keys: Vec<String> = objects
            .iter()
            .map(|o| {
                o.location
                    .as_ref()
                    .strip_prefix(&format!("{prefix}/"))
                    .unwrap_or(o.location.as_ref())
                    .to_owned()
            })
            .collect();
        keys.sort();
        keys
    }

    /// The object under `prefix/key`, if any.
    pub fn read(&self, prefix: &str, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let path = Self::path(prefix, key);
        self.rt.block_on(async {
            match self.client.get(&path).await {
                Ok(r) => Some(r.bytes().await.expect("read object").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {path}: {e}"),
            }
        })
    }

    /// Stores `bytes` under `prefix/key`, as another tool would.
    pub fn write(&self, prefix: &str, key: &str, bytes: &[u8]) {
        use object_store::ObjectStoreExt;
        let path = Self::path(prefix, key);
        self.rt
            .block_on(self.client.put(&path, bytes.to_vec().into()))
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    }

    /// Keys of the multipart uploads begun and neither completed nor aborted below
    /// `prefix` (S3's ListMultipartUploads, through a presigned URL).
    pub fn pending_uploads(&self, prefix: &str) -> Vec<String> {
        use object_store::signer::{Method, SignedUrlOptions, Signer};
        let options = SignedUrlOptions::default()
            .with_query([("uploads", ""), ("prefix", &format!("{prefix}/"))]);
        let url = self
            .rt
            .block_on(self.client.signed_url_opts(
                Method::GET,
                &object_store::path::Path::from(""),
                Duration::from_secs(60),
                &options,
            ))
            .expect("presign ListMultipartUploads");
        let addr: SocketAddr = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(80)
        )
        .parse()
        .expect("Garage listens on an IP address");
        let target = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        let r = send(addr, "GET", &target, &[], b"");
        let text = r.text();
        assert_eq!(r.status, 200, "ListMultipartUploads: {text}");
        let mut keys = Vec::new();
        for upload in text.split("<Upload>").skip(1) {
            if let Some(key) = upload
                .split("<Key>")
                .nth(1)
                .and_then(|k| k.split("</Key>").next())
            {
                keys.push(key.to_owned());
            }
        }
        keys.sort();
        keys
    }
}
