//! Pull-through upstream caches: a narinfo this cache does not hold is asked of the
//! upstreams (in priority order, each request bounded by the timeout), and a hit,
//! once verified, is stored here and served as if it had been uploaded.
//!
//! How the cache's invariant (every served narinfo has its NAR, and the narinfos of
//! its references) is kept: a path from upstream is stored exactly as a `nix copy
//! --to` would store it, through the same ingest checks, in the same order:
//!
//! 1. its narinfo is fetched and must carry a valid signature by one of the upstream
//!    keys (`NIX_STORED_UPSTREAM_KEYS`; a content address alone is not enough);
//! 2. each reference this cache lacks is pulled first, recursively (a reference no
//!    upstream delivers fails the path);
//! 3. its NAR file is downloaded into storage through the upload path
//!    ([`Cache::put`]): written by the storage's atomic upload, its FileHash checked
//!    as it streams and the NAR inside decoded, so a wrong, truncated or damaged file
//!    is dropped and nothing stored;
//! 4. the narinfo is stored through the narinfo upload checks (NAR present with its
//!    FileSize, NarHash and NarSize matching, references present).
//!
//! The narinfo request that caused the pull waits for all of it, NAR included (the
//! pull runs in a task of its own, so a client that gives up does not stop it): it
//! costs latency on the first request of a path (the NAR's download), and in return
//! a narinfo is never served before its NAR can be, NAR requests (GET, HEAD, Range)
//! are served from storage like any other, and the path counts for the closure check
//! of uploads and for retention like any uploaded path. Everything goes through the
//! [`crate::storage::Storage`] trait, so it works on every backend.
//!
//! Concurrent requests for one path share one fetch ([`flight`]), and a path no
//! upstream delivered (absent, unreachable, too slow, or refused by verification) is
//! answered from memory for the negative TTL ([`misses`]). Upstream failures never
//! become errors for the client: the narinfo is simply not in this cache (404). A
//! local hit never asks the upstreams, and local uploads take precedence: the
//! upstreams are asked only when storage has no narinfo for the path.

#[cfg(feature = "upstream")]
mod client;
#[cfg(feature = "upstream")]
mod flight;
#[cfg(feature = "upstream")]
mod misses;
#[cfg(feature = "upstream")]
mod pending;
#[cfg(feature = "upstream")]
mod pull;
pub mod settings;
#[cfg(feature = "upstream")]
mod spool;
#[cfg(feature = "upstream")]
mod stats;

#[cfg(feature = "upstream")]
pub use pull::Upstreams;
pub use settings::{UpstreamArgs, UpstreamSettings};
