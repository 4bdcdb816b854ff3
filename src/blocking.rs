//! Work too long to run on the daemon's async worker. The daemon runs one worker thread
//! (a second one only costs cross-thread wake-ups on the message path: see
//! BENCHMARKS.md); CPU-heavy work (a body rewritten or signed, a copy rendered, an API
//! query over many rows) hands that worker's other tasks to another thread while it runs,
//! so one large message never stalls the others.

/// A body over this is heavy work to rewrite or copy (about a millisecond of CPU); a
/// smaller one is done sooner than the worker could hand its other tasks over.
const HEAVY_BYTES: usize = 256 * 1024;

/// Whether rendering a body of `body_len` bytes (signed or not: an RSA signature is
/// about a millisecond whatever the size) is worth [`heavy`].
pub fn is_heavy(body_len: usize, signed: bool) -> bool {
    signed || body_len > HEAVY_BYTES
}

/// Run `f`, letting the runtime's other tasks go on elsewhere meanwhile when it can (a
/// multi-thread runtime; elsewhere, e.g. a test's current-thread runtime, `f` just runs).
pub fn heavy<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::heavy;

    #[test]
    fn runs_anywhere() {
        assert_eq!(heavy(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { heavy(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert_eq!(
            multi.block_on(async { tokio::spawn(async { heavy(|| 3) }).await.unwrap() }),
            3
        );
    }

    /// While one task runs heavy work, another on the same one-worker runtime goes on.
    #[test]
    fn others_go_on_meanwhile() {
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        multi.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let blocked = tokio::spawn(async move {
                heavy(|| rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok())
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            // Runs although the one worker is inside `heavy`.
            let other = tokio::spawn(async move { tx.send(()).unwrap() });
            other.await.unwrap();
            assert!(blocked.await.unwrap(), "the other task never ran");
        });
    }
}
