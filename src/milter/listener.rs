//! Listening sockets. TCP connections get two fixes measured on this project
//! (docs/architecture.md): TCP_NODELAY, so several end-of-message actions are not held back
//! for the MTA's delayed ACK (~44 ms a message), and TCP_QUICKACK re-armed after every
//! read, because Postfix leaves Nagle on and its second write would otherwise wait ~42 ms
//! for our delayed ACK. Every listener here survives failed accepts ([`Resilient`]):
//! with its descriptors exhausted it pauses and goes on, where indymilter's loop would
//! end (and the daemon with it).

use crate::config::SocketSpec;
use crate::connlimit::{Open, Throttle, accept_failed};
use indymilter::{EitherListener, Listener};
use std::future::Future as _;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener};

/// A TCP listener whose connections answer without Nagle and delayed-ACK stalls.
pub struct LowLatencyTcpListener(pub TcpListener);

impl Listener for LowLatencyTcpListener {
    type Io = QuickAckStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(stream, _)| {
            // Best effort: a socket that refuses the option still works, only slower.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY on a milter connection: {e}");
            }
            QuickAckStream(stream)
        })
    }
}

/// A TCP stream that re-arms TCP_QUICKACK after each read.
pub struct QuickAckStream(TcpStream);

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Linux clears QUICKACK on its own after a while; set it again each time.
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        result
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A listener whose accept never fails: an error is counted, logged at most once a
/// minute, and followed by a short pause (`connlimit::accept_backoff`); accepted
/// connections are counted in `/metrics` while open.
pub struct Resilient<L> {
    inner: L,
    name: &'static str,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    throttle: Throttle,
}

impl<L> Resilient<L> {
    pub fn new(inner: L, name: &'static str) -> Self {
        Resilient {
            inner,
            name,
            pause: None,
            throttle: Throttle::new(),
        }
    }

    pub fn inner(&self) -> &L {
        &self.inner
    }
}

impl<L: Listener> Listener for Resilient<L> {
    type Io = Counted<L::Io>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(pause) = &mut self.pause {
                std::task::ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            match self.inner.poll_accept(cx) {
                Poll::Ready(Ok(io)) => {
                    return Poll::Ready(Ok(Counted {
                        io,
                        _open: Open::new(self.name),
                    }));
                }
                Poll::Ready(Err(e)) => {
                    let pause = accept_failed(self.name, &e, &self.throttle);
                    if !pause.is_zero() {
                        self.pause = Some(Box::pin(tokio::time::sleep(pause)));
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// An accepted connection, counted as open until dropped.
pub struct Counted<S> {
    io: S,
    _open: Open,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The daemon's listener: TCP or a UNIX socket, never failing an accept.
pub type MilterListener = Resilient<EitherListener<LowLatencyTcpListener, UnixListener>>;

/// A bound listener; a UNIX socket file is removed again when this is dropped.
pub struct BoundSocket {
    pub listener: MilterListener,
    unix_path: Option<PathBuf>,
}

impl BoundSocket {
    /// Bind the configured milter socket. A stale UNIX socket file left by a crashed
    /// run is replaced; any other file at that path is an error.
    pub async fn bind(spec: &SocketSpec) -> io::Result<BoundSocket> {
        Self::bind_as(spec, "milter").await
    }

    /// [`BoundSocket::bind`] for the listener `name` (its name in `/metrics` and logs).
    pub async fn bind_as(spec: &SocketSpec, name: &'static str) -> io::Result<BoundSocket> {
        match spec {
            SocketSpec::Inet(addr) => {
                let listener = TcpListener::bind(addr.as_str()).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on inet:{addr}: {e}"))
                })?;
                Ok(BoundSocket {
                    listener: Resilient::new(
                        EitherListener::Tcp(LowLatencyTcpListener(listener)),
                        name,
                    ),
                    unix_path: None,
                })
            }
            SocketSpec::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                if let Ok(meta) = std::fs::symlink_metadata(path)
                    && meta.file_type().is_socket()
                {
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on unix:{}: {e}", path.display()),
                    )
                })?;
                Ok(BoundSocket {
                    listener: Resilient::new(EitherListener::Unix(listener), name),
                    unix_path: Some(path.clone()),
                })
            }
        }
    }

    /// The TCP address bound (useful with port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self.listener.inner() {
            EitherListener::Tcp(l) => l.0.local_addr().ok(),
            EitherListener::Unix(_) => None,
        }
    }

    /// Split into the listener and a guard that removes the socket file on drop.
    pub fn into_parts(mut self) -> (MilterListener, SocketFileGuard) {
        let guard = SocketFileGuard(self.unix_path.take());
        (self.listener, guard)
    }
}

/// Removes a UNIX socket file when dropped.
pub struct SocketFileGuard(Option<PathBuf>);

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
