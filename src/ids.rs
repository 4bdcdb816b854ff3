//! Transmission ids: decimal, unique across restarts and hosts, made without I/O.
//!
//! Layout of the 63-bit number: milliseconds since 2024-01-01 (41 bits, until 2093), the
//! configured node id (10 bits), and a per-millisecond sequence (12 bits). Uniqueness
//! across restarts relies on the clock not stepping back while the daemon is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;
const TIME_BITS: u32 = 41;
/// 2024-01-01T00:00:00Z in Unix milliseconds.
const EPOCH_MS: u64 = 1_704_067_200_000;
/// How far ids may run ahead of the clock under a burst (4096 ids a millisecond) or
/// after the clock stepped back, before the generator refuses.
const MAX_AHEAD_MS: u64 = 2_000;

/// Why no id could be made; the milter answers SparkPost's 421 for both.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("the system clock is before 2024 or after 2093")]
    Clock,
    #[error("transmission ids exhausted: more than {MAX_AHEAD_MS} ms ahead of the clock")]
    Exhausted,
}

/// Hands out transmission ids; shared by all connections.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    /// The last (time << SEQ_BITS | seq) handed out.
    last: AtomicU64,
}

impl IdGenerator {
    pub fn new(node_id: u16) -> Self {
        Self {
            node: u64::from(node_id.min(MAX_NODE_ID)),
            last: AtomicU64::new(0),
        }
    }

    /// The next id at wall-clock time `now`.
    pub fn next_at(&self, now: SystemTime) -> Result<u64, IdError> {
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .and_then(|ms| ms.checked_sub(EPOCH_MS))
            .filter(|ms| *ms < (1 << TIME_BITS) - MAX_AHEAD_MS)
            .ok_or(IdError::Clock)?;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let (last_ms, last_seq) = (last >> SEQ_BITS, last & SEQ_MAX);
            let (ms, seq) = if now_ms > last_ms {
                (now_ms, 0)
            } else if last_seq < SEQ_MAX {
                (last_ms, last_seq + 1)
            } else {
                (last_ms + 1, 0)
            };
            if ms > now_ms + MAX_AHEAD_MS {
                return Err(IdError::Exhausted);
            }
            let next = (ms << SEQ_BITS) | seq;
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok((ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq),
                Err(actual) => last = actual,
            }
        }
    }

    pub fn next(&self) -> Result<u64, IdError> {
        self.next_at(SystemTime::now())
    }
}

/// The wall clock in Unix seconds (0 before 1970).
pub fn unix_secs() -> u64 {
    unix_millis() / 1000
}

/// The wall clock in Unix milliseconds (0 before 1970).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds as a `Duration` after the id epoch, for tests and tools.
pub fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(EPOCH_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn unique_and_increasing_in_a_burst() {
        let g = IdGenerator::new(5);
        let t = epoch() + Duration::from_secs(3600);
        let ids: Vec<u64> = (0..20_000).map(|_| g.next_at(t).unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ids.iter()
                .all(|id| (id >> SEQ_BITS) & u64::from(MAX_NODE_ID) == 5)
        );
    }

    #[test]
    fn nodes_never_collide() {
        let t = epoch() + Duration::from_secs(1);
        let a: HashSet<u64> = {
            let g = IdGenerator::new(1);
            (0..5000).map(|_| g.next_at(t).unwrap()).collect()
        };
        let g = IdGenerator::new(2);
        assert!((0..5000).all(|_| !a.contains(&g.next_at(t).unwrap())));
    }

    #[test]
    fn exhaustion_and_clock_failure() {
        let g = IdGenerator::new(0);
        let t = epoch() + Duration::from_secs(1);
        let per_ms = (SEQ_MAX + 1) as usize;
        for _ in 0..per_ms * (MAX_AHEAD_MS as usize + 1) {
            g.next_at(t).unwrap();
        }
        assert_eq!(g.next_at(t), Err(IdError::Exhausted));
        // The clock catching up frees it again.
        assert!(g.next_at(t + Duration::from_secs(5)).is_ok());
        assert_eq!(g.next_at(UNIX_EPOCH), Err(IdError::Clock));
    }

    #[test]
    fn clock_stepping_back_keeps_ids_unique() {
        let g = IdGenerator::new(0);
        let t = epoch() + Duration::from_secs(10);
        let a = g.next_at(t).unwrap();
        let b = g.next_at(t - Duration::from_millis(500)).unwrap();
        assert!(b > a);
    }
}
