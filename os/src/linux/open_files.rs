//! The server's open-file limit (RLIMIT_NOFILE), and the one its containers' processes get.
//!
//! A server with thousands of containers holds descriptors for each (OOM event files, init
//! connections, process streams), far beyond the usual soft limit of 1024. So it raises its
//! soft limit to the hard limit at start, as every Go program does (gdn included).
//!
//! Container processes must not notice: gdn's processes get the limits runc inherits from gdn,
//! and Go hands the children it starts the soft limit the program started with, not the raised
//! one. So the limit the server started with is passed to the zygote (the process every
//! container's init descends from) in [`INHERITED_SOFT_LIMIT_ENV`], and the zygote lowers its
//! own soft limit back to it before forking anything. A process spec's `rlimits` still set
//! both limits exactly as asked.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Carries the soft limit the server started with to the zygote.
pub const INHERITED_SOFT_LIMIT_ENV: &str = "TRELLIS_INHERITED_NOFILE";

/// What [`raise_soft_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit the process started with (what containers keep).
    pub started_with: u64,
    /// The soft limit now (the hard limit).
    pub soft: u64,
    pub hard: u64,
}

/// Raises this process's soft open-file limit to its hard limit, and records the old one for
/// the zygote.
///
/// # Safety
///
/// Changes the environment: call it before the process starts any thread.
pub unsafe fn raise_soft_limit() -> std::io::Result<Raised> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        std::env::set_var(INHERITED_SOFT_LIMIT_ENV, soft.to_string());
    }
    Ok(Raised {
        started_with: soft,
        soft: hard,
        hard,
    })
}

/// In the zygote: lowers the soft limit back to what the server started with (see the module
/// docs), and forgets the variable so that nothing below inherits it.
///
/// # Safety
///
/// Changes the environment: call it before the process starts any thread.
pub unsafe fn restore_inherited_soft_limit() -> std::io::Result<()> {
    let Some(value) = std::env::var_os(INHERITED_SOFT_LIMIT_ENV) else {
        return Ok(());
    };
    std::env::remove_var(INHERITED_SOFT_LIMIT_ENV);
    let soft: u64 = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{INHERITED_SOFT_LIMIT_ENV}={value:?} is not a number"),
        )
    })?;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
    Ok(())
}
