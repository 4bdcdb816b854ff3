//! A do-nothing milter on indymilter: the baseline of the benchmarks (the milter
//! protocol's own cost). It takes every stage and answers "continue" to each, as a
//! simple milter does; `--lean` negotiates away every stage but end-of-message instead.
//!
//! Usage: null_milter PORT [--lean] [--actions N] [--no-nodelay]
//!   --actions N    add N headers at end of message (to show the delayed-ACK stall)
//!   --no-nodelay   indymilter's plain TCP listener (Nagle on, delayed ACKs) instead of
//!                  msys-milter's (TCP_NODELAY, TCP_QUICKACK re-armed after each read)

use indymilter::{Callbacks, ContextActions, EitherListener, Status};
use msys_milter::milter::listener::LowLatencyTcpListener;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args
        .get(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: null_milter PORT [--actions N] [--no-nodelay]");
    let actions: usize = args
        .iter()
        .position(|a| a == "--actions")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let nodelay = !args.iter().any(|a| a == "--no-nodelay");
    let lean = args.iter().any(|a| a == "--lean");
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let mut callbacks: Callbacks<()> = Callbacks::new();
    if !lean {
        callbacks = callbacks
            .on_connect(|_, _, _| Box::pin(async { Status::Continue }))
            .on_helo(|_, _| Box::pin(async { Status::Continue }))
            .on_mail(|_, _| Box::pin(async { Status::Continue }))
            .on_rcpt(|_, _| Box::pin(async { Status::Continue }))
            .on_data(|_| Box::pin(async { Status::Continue }))
            .on_header(|_, _, _| Box::pin(async { Status::Continue }))
            .on_eoh(|_| Box::pin(async { Status::Continue }))
            .on_body(|_, _| Box::pin(async { Status::Continue }));
    }
    let callbacks = callbacks.on_eom(move |cx| {
        Box::pin(async move {
            for i in 0..actions {
                if cx
                    .actions
                    .add_header("X-Null", i.to_string())
                    .await
                    .is_err()
                {
                    return Status::Tempfail;
                }
            }
            Status::Continue
        })
    });
    let config = indymilter::Config {
        max_connections: 2048,
        actions: if actions > 0 {
            indymilter::Actions::ADD_HEADER
        } else {
            Default::default()
        },
        ..Default::default()
    };
    let listener = if nodelay {
        EitherListener::Tcp(LowLatencyTcpListener(listener))
    } else {
        // EitherListener only picks between two listener types; this one is plain TCP.
        EitherListener::Unix(listener)
    };
    indymilter::run(listener, callbacks, config, tokio::signal::ctrl_c())
        .await
        .unwrap();
}
