//! What the listeners let their clients hold. The descriptor limit is raised to the
//! hard limit at start and split into a cap per listener (milter, HTTP, LMTP) that
//! leaves room for the store, the webhooks and re-injection; a connection over its
//! listener's cap is answered and closed at once, never left waiting in the backlog;
//! an accept that fails (descriptors exhausted, a connection reset before it was
//! taken) backs off briefly instead of ending the listener; and what happens is
//! logged at most once a minute, so an attack cannot fill the log either.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The process's descriptor limit, before and after raising it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nofile {
    /// The soft limit the process was started with.
    pub before: u64,
    /// The soft limit now (the hard limit, when raising it worked).
    pub soft: u64,
    pub hard: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit.
pub fn raise_nofile() -> io::Result<Nofile> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes only into `limit`, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(Nofile {
        before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// How many connections each listener may hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub milter: usize,
    pub http: usize,
    pub lmtp: usize,
}

impl Caps {
    fn total(self) -> u64 {
        (self.milter + self.http + self.lmtp) as u64
    }
}

/// Descriptors kept for everything but the listeners' clients: standard streams,
/// listening sockets, the store's writer and readers, the MTA log, the JSONL file,
/// the tokio runtime's own, one pool per webhook, and the re-injection connections.
pub fn reserve(reinject_concurrency: usize, webhooks: usize) -> u64 {
    64 + reinject_concurrency as u64 + 8 * webhooks as u64
}

/// The caps that fit `limit` with `reserve` descriptors kept apart: as configured when
/// they fit, else each lowered in proportion (never below 1).
pub fn fit(caps: Caps, limit: u64, reserve: u64) -> Caps {
    let available = limit.saturating_sub(reserve).max(3);
    let total = caps.total();
    if total <= available {
        return caps;
    }
    let scale = |cap: usize| -> usize {
        let share = (cap as u128 * available as u128 / total.max(1) as u128) as usize;
        share.clamp(1, cap.max(1))
    };
    Caps {
        milter: scale(caps.milter),
        http: scale(caps.http),
        lmtp: scale(caps.lmtp),
    }
}

/// Lets something through at most once a minute (a log line under attack).
#[derive(Debug, Default)]
pub struct Throttle(AtomicU64);

/// A throttle's period.
const THROTTLE_SECS: u64 = 60;

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle(AtomicU64::new(0))
    }

    /// True at most once per minute.
    pub fn ready(&self) -> bool {
        let now = crate::ids::unix_secs().max(1);
        let last = self.0.load(Ordering::Relaxed);
        if last != 0 && now < last + THROTTLE_SECS {
            return false;
        }
        self.0
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// How long to wait before accepting again after `e`: a connection that went away
/// before it was taken is nobody's problem; exhausted descriptors or memory free up
/// as connections end; anything else is unexpected and retried slowly.
pub fn accept_backoff(e: &io::Error) -> Duration {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EINTR) => Duration::ZERO,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => {
            Duration::from_millis(100)
        }
        _ => Duration::from_secs(1),
    }
}

/// Record a failed accept on `listener`: counted, logged at most once a minute.
pub fn accept_failed(listener: &'static str, e: &io::Error, throttle: &Throttle) -> Duration {
    crate::metrics::global().accept_error(listener);
    let pause = accept_backoff(e);
    if !pause.is_zero() && throttle.ready() {
        tracing::warn!(
            listener,
            pause_ms = pause.as_millis() as u64,
            "accept failed, pausing (logged once a minute): {e}"
        );
    }
    pause
}

/// A listener's connection slots.
#[derive(Clone, Debug)]
pub struct Slots {
    listener: &'static str,
    free: Arc<tokio::sync::Semaphore>,
    refusals: Arc<Throttle>,
}

/// One held connection; frees its slot when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// An open connection of a listener, counted in `/metrics` until dropped.
#[derive(Debug)]
pub struct Open(&'static str);

impl Open {
    pub fn new(listener: &'static str) -> Open {
        crate::metrics::global().connection_opened(listener);
        Open(listener)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        crate::metrics::global().connection_closed(self.0);
    }
}

impl Slots {
    pub fn new(listener: &'static str, cap: usize) -> Slots {
        Slots {
            listener,
            free: Arc::new(tokio::sync::Semaphore::new(cap.max(1))),
            refusals: Arc::new(Throttle::new()),
        }
    }

    /// A slot, or `None` at the cap (counted as refused; logged once a minute).
    pub fn try_take(&self) -> Option<Slot> {
        match Arc::clone(&self.free).try_acquire_owned() {
            Ok(permit) => Some(Slot { _permit: permit }),
            Err(_) => {
                crate::metrics::global().connection_refused(self.listener);
                if self.refusals.ready() {
                    tracing::warn!(
                        listener = self.listener,
                        "connection refused: the listener is at its cap (logged once a minute)"
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_the_limit() {
        let caps = Caps {
            milter: 1024,
            http: 512,
            lmtp: 64,
        };
        assert_eq!(fit(caps, 65_536, reserve(16, 1)), caps);
        let small = fit(caps, 1024, reserve(16, 1));
        assert!(small.total() + reserve(16, 1) <= 1024, "{small:?}");
        assert!(small.milter > small.http && small.http > small.lmtp);
        assert!(small.lmtp >= 1);
        // Absurdly low: every listener still gets one.
        let tiny = fit(caps, 10, reserve(16, 1));
        assert_eq!(
            tiny,
            Caps {
                milter: 1,
                http: 1,
                lmtp: 1
            }
        );
    }

    #[test]
    fn accept_errors_back_off_by_kind() {
        let err = |code| io::Error::from_raw_os_error(code);
        assert_eq!(accept_backoff(&err(libc::ECONNABORTED)), Duration::ZERO);
        assert_eq!(
            accept_backoff(&err(libc::EMFILE)),
            Duration::from_millis(100)
        );
        assert_eq!(
            accept_backoff(&err(libc::ENFILE)),
            Duration::from_millis(100)
        );
        assert_eq!(accept_backoff(&err(libc::EINVAL)), Duration::from_secs(1));
    }

    #[test]
    fn a_throttle_opens_once_a_minute() {
        let t = Throttle::new();
        assert!(t.ready());
        assert!(!t.ready());
        t.0.store(crate::ids::unix_secs() - THROTTLE_SECS, Ordering::Relaxed);
        assert!(t.ready());
    }

    #[tokio::test]
    async fn slots_refuse_over_the_cap_and_free_on_drop() {
        let slots = Slots::new("test", 2);
        let a = slots.try_take().unwrap();
        let _b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
    }
}
