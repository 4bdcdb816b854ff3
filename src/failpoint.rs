//! Crash and stall points for the reliability tests. In debug builds only,
//! `MSYS_MILTER_FAILPOINT=NAME` makes the daemon abort (no clean-up, as a SIGKILL) when
//! it reaches the point `NAME`, and `stall:NAME` makes it hang there; release builds
//! compile every point away.

#[cfg(debug_assertions)]
fn configured() -> Option<&'static str> {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    POINT
        .get_or_init(|| std::env::var("MSYS_MILTER_FAILPOINT").ok())
        .as_deref()
}

/// Abort here when this is the configured crash point (debug builds).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if configured() == Some(name) {
        eprintln!("msys-milter: crash point `{name}` reached: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Hang here for an hour when the configured point is `stall:NAME` (debug builds): a
/// disk that stops answering.
#[inline]
pub fn stall(name: &str) {
    #[cfg(debug_assertions)]
    if configured().and_then(|p| p.strip_prefix("stall:")) == Some(name) {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
