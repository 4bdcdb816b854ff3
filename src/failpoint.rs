//! Crash points for the exactly-once tests. In debug builds only,
//! `MSYS_MILTER_FAILPOINT=NAME` makes the daemon abort (no clean-up, as a SIGKILL) when
//! it reaches the point `NAME`; release builds compile every point away.

/// Abort here when this is the configured crash point (debug builds).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let point = POINT.get_or_init(|| std::env::var("MSYS_MILTER_FAILPOINT").ok());
        if point.as_deref() == Some(name) {
            eprintln!("msys-milter: crash point `{name}` reached: aborting");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
