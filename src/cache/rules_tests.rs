//! Every upload rule, checked against the in-memory storage: a rule change is
//! tested in milliseconds here, and end to end by the black-box suite.

use std::sync::Arc;

use bytes::Bytes;
use nix_derivation::{nixbase32, StoreDir};
use sha2::{Digest, Sha256};

use super::ingest::{BodyError, PutOutcome};
use super::key::ObjectKey;
use super::{Cache, CacheError, CacheSettings};
use crate::budget::Budget;
use crate::cache::compression::tests::xz as xz_at;
use crate::cache::nar::tests::file_nar as nar_of;
use crate::storage::memory::MemoryStorage;

/// xz at Nix's default preset.
fn xz(data: &[u8]) -> Vec<u8> {
    xz_at(data, 6)
}

const STORE: &str = "/nix/store";

fn cache_with(storage: Arc<MemoryStorage>, settings: impl FnOnce(&mut CacheSettings)) -> Cache {
    let mut s = CacheSettings {
        store_dir: StoreDir::default(),
        priority: 30,
        max_upload_size: 1 << 30,
        trusted_keys: Vec::new(),
        retention: Default::default(),
        narinfo_linger: std::time::Duration::ZERO,
        page: true,
        narinfo_cache_size: 0,
        narinfo_cache_coherence: crate::cache::narinfo_cache::Coherence::Off,
    };
    settings(&mut s);
    Cache::new(storage, s, Budget::new(crate::budget::DEFAULT_BUDGET))
}

fn cache() -> (Cache, Arc<MemoryStorage>) {
    let storage = Arc::new(MemoryStorage::default());
    (cache_with(storage.clone(), |_| {}), storage)
}

fn nix32(bytes: &[u8]) -> String {
    nixbase32::encode(&Sha256::digest(bytes))
}

fn store_hash(seed: &str) -> String {
    nixbase32::encode(&Sha256::digest(seed.as_bytes())[..20])
}

/// A narinfo as Nix writes it, for `nar` stored as `file` (`ext`, `compression`).
struct Info {
    hash: String,
    name: String,
    file: Vec<u8>,
    ext: &'static str,
    compression: &'static str,
    nar: Vec<u8>,
    refs: Vec<String>,
    deriver: Option<String>,
    sigs: Vec<String>,
}

impl Info {
    fn new(seed: &str, nar: &[u8]) -> Self {
        Info {
            hash: store_hash(seed),
            name: "p".into(),
            file: nar.to_vec(),
            ext: "",
            compression: "none",
            nar: nar.to_vec(),
            refs: Vec::new(),
            deriver: None,
            sigs: Vec::new(),
        }
    }

    /// The same, with the NAR stored xz-compressed.
    fn xz(seed: &str, nar: &[u8]) -> Self {
        let mut info = Info::new(seed, nar);
        info.file = xz(nar);
        info.ext = ".xz";
        info.compression = "xz";
        info
    }

    /// A narinfo for `seed` that claims `claimed`'s NAR but points at `file`'s file.
    fn lying_about(seed: &str, claimed: &[u8], file: &Info) -> Self {
        let mut lying = Info::new(seed, claimed);
        lying.file = file.file.clone();
        lying.ext = file.ext;
        lying.compression = file.compression;
        lying
    }

    fn nar_key(&self) -> String {
        format!("nar/{}.nar{}", nix32(&self.file), self.ext)
    }

    fn key(&self) -> String {
        format!("{}.narinfo", self.hash)
    }

    fn render(&self) -> String {
        let mut s = format!(
            "StorePath: {STORE}/{}-{}\nURL: {}\nCompression: {}\nFileHash: sha256:{}\nFileSize: {}\nNarHash: sha256:{}\nNarSize: {}\nReferences: {}\n",
            self.hash,
            self.name,
            self.nar_key(),
            self.compression,
            nix32(&self.file),
            self.file.len(),
            nix32(&self.nar),
            self.nar.len(),
            self.refs.join(" "),
        );
        if let Some(d) = &self.deriver {
            s.push_str(&format!("Deriver: {d}\n"));
        }
        for sig in &self.sigs {
            s.push_str(&format!("Sig: {sig}\n"));
        }
        s
    }
}

/// A well-formed (64-byte) signature value.
fn sig_bytes(seed: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([seed; 64])
}

async fn put(cache: &Cache, key: &str, body: &[u8]) -> Result<PutOutcome, CacheError> {
    let key = ObjectKey::parse(key).expect("a valid key");
    let permit = cache.precheck_upload(&key, Some(body.len() as u64))?;
    let chunks: Vec<Result<Bytes, BodyError>> = body
        .chunks(7000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    cache
        .put(&key, permit, futures_util::stream::iter(chunks))
        .await
}

/// Uploads the NAR file and the narinfo of `info`.
async fn put_path(cache: &Cache, info: &Info) -> Result<PutOutcome, CacheError> {
    put(cache, &info.nar_key(), &info.file).await?;
    put(cache, &info.key(), info.render().as_bytes()).await
}

fn rejected(r: Result<PutOutcome, CacheError>, why: &str) {
    match r {
        Err(CacheError::Rejected(msg)) => assert!(msg.contains(why), "{why}: {msg}"),
        other => panic!("{why}: expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_nar_must_hash_to_its_name_and_be_a_nar() {
    let (cache, storage) = cache();
    let nar = nar_of(b"contents");
    let other = nar_of(b"other contents");
    rejected(
        put(&cache, &format!("nar/{}.nar", nix32(&other)), &nar).await,
        "hashes to",
    );
    let garbage = b"not a NAR at all".to_vec();
    rejected(
        put(&cache, &format!("nar/{}.nar", nix32(&garbage)), &garbage).await,
        "NAR",
    );
    let not_nar_xz = xz(&garbage);
    rejected(
        put(
            &cache,
            &format!("nar/{}.nar.xz", nix32(&not_nar_xz)),
            &not_nar_xz,
        )
        .await,
        "NAR",
    );
    assert_eq!(storage.keys(), Vec::<String>::new(), "nothing stored");
    let key = format!("nar/{}.nar", nix32(&nar));
    assert_eq!(put(&cache, &key, &nar).await.unwrap(), PutOutcome::Created);
    assert_eq!(put(&cache, &key, &nar).await.unwrap(), PutOutcome::Replaced);
}

#[tokio::test]
async fn a_narinfo_needs_its_nar_and_its_references_first() {
    let (cache, _) = cache();
    let dep = Info::new("dep", &nar_of(b"dep"));
    let mut top = Info::new("top", &nar_of(b"top"));
    top.refs = vec![format!("{}-{}", dep.hash, dep.name)];
    rejected(
        put(&cache, &top.key(), top.render().as_bytes()).await,
        "upload it first",
    );
    put(&cache, &top.nar_key(), &top.file).await.unwrap();
    rejected(
        put(&cache, &top.key(), top.render().as_bytes()).await,
        "reference",
    );
    put_path(&cache, &dep).await.unwrap();
    assert_eq!(
        put(&cache, &top.key(), top.render().as_bytes())
            .await
            .unwrap(),
        PutOutcome::Created
    );
}

#[tokio::test]
async fn a_narinfo_must_describe_its_nar() {
    let (cache, _) = cache();
    let nar = nar_of(b"compressed contents");
    let info = Info::xz("compressed", &nar);
    put(&cache, &info.nar_key(), &info.file).await.unwrap();
    // Another NAR's hash and size: the NAR decodes to something else.
    let lying = Info::lying_about("compressed", &nar_of(b"other"), &info);
    rejected(
        put(&cache, &lying.key(), lying.render().as_bytes()).await,
        "NarHash",
    );
    let size = info.render().replace(
        &format!("NarSize: {}", nar.len()),
        &format!("NarSize: {}", nar.len() + 8),
    );
    rejected(put(&cache, &info.key(), size.as_bytes()).await, "NarSize");
    assert_eq!(
        put(&cache, &info.key(), info.render().as_bytes())
            .await
            .unwrap(),
        PutOutcome::Created
    );
}

#[tokio::test]
async fn a_nar_written_by_another_tool_is_decoded_for_its_narinfo() {
    let (cache, storage) = cache();
    let nar = nar_of(b"written behind the server's back");
    let info = Info::xz("behind", &nar);
    storage.insert(&info.nar_key(), &info.file);
    let lying = Info::lying_about("behind", &nar_of(b"something else"), &info);
    rejected(
        put(&cache, &lying.key(), lying.render().as_bytes()).await,
        "NarHash",
    );
    put(&cache, &info.key(), info.render().as_bytes())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stored_path_only_gains_signatures() {
    let (cache, storage) = cache();
    let mut info = Info::new("stored", &nar_of(b"stored"));
    info.sigs = vec![format!("one:{}", sig_bytes(1))];
    put_path(&cache, &info).await.unwrap();

    let mut changed = Info::new("stored", &nar_of(b"stored"));
    changed.deriver = Some(format!("{}-p.drv", store_hash("drv")));
    match put(&cache, &changed.key(), changed.render().as_bytes()).await {
        Err(CacheError::Conflict(msg)) => assert!(msg.contains("Deriver"), "{msg}"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    let mut resigned = Info::new("stored", &nar_of(b"stored"));
    resigned.sigs = vec![format!("two:{}", sig_bytes(2))];
    assert_eq!(
        put(&cache, &resigned.key(), resigned.render().as_bytes())
            .await
            .unwrap(),
        PutOutcome::Replaced
    );
    let stored = storage.get(&info.key()).unwrap();
    let text = std::str::from_utf8(&stored).unwrap();
    assert!(
        text.contains("Sig: one:") && text.contains("Sig: two:"),
        "{text}"
    );
}

#[tokio::test]
async fn listings_and_documents_must_be_json_objects() {
    let (cache, storage) = cache();
    let h = store_hash("listing");
    rejected(put(&cache, &format!("{h}.ls"), b"[1, 2]").await, "JSON");
    rejected(put(&cache, &format!("{h}.ls"), b"{\"a\": ").await, "JSON");
    let doi = format!("realisations/sha256:{}!out.doi", "ab".repeat(32));
    rejected(put(&cache, &doi, b"\"a string\"").await, "JSON object");
    assert!(storage.keys().is_empty());
    put(&cache, &format!("{h}.ls"), br#"{"version":1,"root":{}}"#)
        .await
        .unwrap();
    put(&cache, &doi, br#"{"outPath":"x"}"#).await.unwrap();
}

#[tokio::test]
async fn limits_and_trusted_keys() {
    let storage = Arc::new(MemoryStorage::default());
    let cache = cache_with(storage.clone(), |s| s.max_upload_size = 100);
    let nar = nar_of(&[7u8; 200]);
    let key = ObjectKey::parse(&format!("nar/{}.nar", nix32(&nar))).unwrap();
    assert!(matches!(
        cache.precheck_upload(&key, Some(nar.len() as u64)),
        Err(CacheError::TooLarge { .. })
    ));

    let storage = Arc::new(MemoryStorage::default());
    let trusted = nix_narinfo::TrustedPublicKey::parse(
        "test-cache-1:DZFFwF/5PPclp0cIqjJCty5ElDaVKFCiNBqWUhBOK08=",
    )
    .unwrap();
    let cache = cache_with(storage, |s| s.trusted_keys = vec![trusted]);
    let info = Info::new("unsigned", &nar_of(b"unsigned"));
    put(&cache, &info.nar_key(), &info.file).await.unwrap();
    rejected(
        put(&cache, &info.key(), info.render().as_bytes()).await,
        "signature",
    );
}
