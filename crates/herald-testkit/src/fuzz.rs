//! The proptest configuration shared by the crates' `#[cfg(test)] mod fuzz`
//! (herald-protocol, herald-auth, herald-gateway, herald-ingest;
//! docs/fuzzing.md): one case count rule and one place for the regression
//! files.
//!
//! Behind the `proptest` feature, so only the crates that fuzz build
//! proptest through this crate.

use proptest::test_runner::{Config, FileFailurePersistence};
use std::sync::OnceLock;

/// Cases per property: `HERALD_FUZZ_CASES` when set (the long local run),
/// else the property's CI count `ci`. The variable is read once per process.
fn cases(ci: u32) -> u32 {
    static LONG: OnceLock<Option<u32>> = OnceLock::new();
    LONG.get_or_init(|| {
        std::env::var("HERALD_FUZZ_CASES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
    })
    .unwrap_or(ci)
}

/// The config of a property run `ci` times in CI ([`cases`]), its failures
/// persisted in `proptest-regressions/` beside the calling crate's `src/`
/// (committed, replayed first).
///
/// `SourceParallel` resolves against the config's `source_file`, which is
/// the caller's: `proptest!` sets it to its own `file!()`, so
/// `crates/<crate>/src/fuzz.rs` keeps `crates/<crate>/proptest-regressions/fuzz.txt`.
/// A hand-built `TestRunner` must set `source_file: Some(file!())` itself
/// (left `None` here, which would persist nothing).
pub fn config(ci: u32) -> Config {
    Config {
        cases: cases(ci),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}
