//! The robustness suite: crashes, a full disk, concurrency, slow and idle clients,
//! hostile input, credentials and a soak, each against the real binary.
//!
//! One test binary so that the tests run in parallel. Every test prints its
//! figures (operations, faults, inputs, and how many went wrong) on stderr, past
//! the test harness's capture. `NIX_STORED_ROBUST_FULL=1` runs the long version
//! (bigger uploads, the ten-minute soak); `NIX_STORED_ROBUST_SEED` replays a run.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod auth;
mod crash;
mod disk;
mod input;
mod load;
mod memory;
