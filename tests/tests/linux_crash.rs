//! The SIGKILL harness in CI (as root): a mixed workload, the server killed at ten seeded
//! moments and restarted, every promise checked after each restart, nothing left on the host
//! at the end (see `trellis_tests::crash`). `TRELLIS_CRASH_SEED` and `TRELLIS_CRASH_KILLS`
//! replay or lengthen it; `trellis-crash` is the long mode.

use trellis_tests::crash::{self, CrashOptions};

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_seeded_moments_loses_no_promise_and_leaves_nothing() {
    let options = CrashOptions {
        seed: env_number("TRELLIS_CRASH_SEED").unwrap_or(20261206),
        kills: env_number("TRELLIS_CRASH_KILLS").unwrap_or(10) as usize,
        ..Default::default()
    };
    let report = crash::run(options).await;
    println!("{}", report.summary());
    assert!(report.passed(), "{}", report.summary());
    assert!(report.kills >= 10, "{}", report.summary());
    // The workload did what it is for: promises were made and checked across the kills.
    assert!(
        report.acknowledged > 0 && report.containers_checked > 0,
        "{}",
        report.summary()
    );
}
