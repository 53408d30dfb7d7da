//! Pull-through upstream caches: a narinfo this cache does not hold is asked of the
//! upstreams, answered at once when one of them has it (verified), and stored here by
//! a pull that runs after the answer.
//!
//! 1. The lookup (the only part a narinfo request waits for): the upstreams are asked
//!    in priority order, each given the timeout for the whole narinfo (connect,
//!    headers and body), so a request waits at most the timeout times the number of
//!    upstreams, whatever the closure behind it. (Not one deadline shared by all: a
//!    first upstream that hangs would then hide the second one's hit.) A narinfo must
//!    carry a valid signature by one of the upstream keys (`NIX_STORED_UPSTREAM_KEYS`;
//!    a content address alone is not enough) and pass the narinfo checks that need no
//!    storage. It then becomes a *pending* path (`pending`): answered from memory
//!    (GET and HEAD), while its pull starts in a task of its own, so that a client
//!    that gives up does not stop it.
//! 2. The pull stores it exactly as a `nix copy --to` would, through the same ingest
//!    checks and in the same order: each reference this cache lacks first (looked up
//!    and pulled as a pending path of its own; the pull waits for it, and a wait that
//!    would close a cycle fails), then its NAR file, then its narinfo through the
//!    narinfo upload checks (NAR present with its FileSize, NarHash and NarSize
//!    matching, references present). So the invariant holds for what is stored: a
//!    stored narinfo always has its NAR and its closure. A failed pull ends the
//!    pending path and remembers the miss.
//! 3. The NAR's download (`spool`), started by the pull or by the first client that
//!    asks for the NAR of a pending path, whichever comes first, and shared by all:
//!    every piece goes into storage through the NAR upload ([`Cache::put`]: written by
//!    the storage's atomic upload, its FileHash checked as it streams, the NAR inside
//!    decoded) and, before that, into an unnamed scratch file that each client
//!    follows at its own pace. Clients get the signed FileSize as Content-Length and
//!    the last byte only once the upload committed, so a file refused by its checks
//!    never reaches a client complete: its body ends with an error (hyper cuts the
//!    connection, a truncated download for Nix), and nothing is stored. HEAD on a
//!    pending NAR is answered from the narinfo; a Range is served from the download
//!    the same way (its last byte once the file is verified).
//!
//! An upload whose narinfo refers to a pending path (Nix's `nix copy --to` skips the
//! paths the cache reports, pending ones included) waits for that pull, bounded, in
//! its closure check. Once stored, an upstream path is like any uploaded one: served
//! from storage, counted for the closure check of uploads and for retention.
//! Everything goes through the [`crate::storage::Storage`] trait (the scratch file
//! too: the directory backend makes it in its `.tmp`, others in the system's
//! temporary directory), so it works on every backend.
//!
//! Pending paths are this server's memory. On storage that several servers share (a
//! bucket), a client's NAR request may reach another server than its narinfo
//! request did, before the pull stored the NAR: so the pulling server writes a pull
//! marker (`nix-stored/pulling/<NAR file>`, naming the store hash) before it answers
//! the narinfo, and removes it when the pull ends. A server asked for a NAR it has
//! neither stored nor pending reads the marker, looks that narinfo up in the
//! upstreams itself (verified by its own keys: the marker is trusted for nothing
//! else) and serves the NAR from a pull of its own; both pulls store the same
//! objects. On storage of its own a server writes no markers.
//!
//! Concurrent lookups of one path share one ([`flight`]), and a path no upstream
//! delivered (absent, unreachable, too slow, or refused by verification, its NAR's
//! included) is answered from memory for the negative TTL ([`misses`]). Upstream
//! failures never become errors for the client: the narinfo is simply not in this
//! cache (404). A local hit never asks the upstreams, and local uploads take
//! precedence: the upstreams are asked only when storage has no narinfo for the path.

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
