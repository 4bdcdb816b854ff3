//! The LMTP listener driven in memory: a recording delivery and one pipelined client
//! conversation.

use msys_milter::feedback::lmtp::{self, Deliver, Reply};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One delivered message: sender, recipients, content.
pub type Delivered = (String, Vec<String>, Vec<u8>);

/// Accepts recipients at `ok.example`, answers each with its position.
#[derive(Default)]
pub struct Recording {
    pub messages: Mutex<Vec<Delivered>>,
}

impl Deliver for Recording {
    fn rcpt(&self, rcpt: &str) -> Result<(), Reply> {
        if rcpt.ends_with("@ok.example") {
            Ok(())
        } else {
            Err(format!("550 5.1.1 <{rcpt}>: no"))
        }
    }

    fn data<'a>(
        &'a self,
        from: &'a str,
        rcpts: &'a [String],
        message: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Vec<Reply>> + Send + 'a>> {
        self.messages
            .lock()
            .unwrap()
            .push((from.to_owned(), rcpts.to_vec(), message));
        Box::pin(async move {
            (0..rcpts.len())
                .map(|i| format!("250 2.0.0 Ok {i}"))
                .collect()
        })
    }
}

/// Run one client conversation: write `input` at once (pipelined), read to EOF.
pub async fn converse<D: Deliver>(deliver: Arc<D>, input: &[u8], max_size: usize) -> String {
    let (client, server) = tokio::io::duplex(1 << 20);
    let task =
        tokio::spawn(async move { lmtp::serve(server, "lmtp.test", max_size, deliver).await });
    let (mut read, mut write) = tokio::io::split(client);
    write.write_all(input).await.unwrap();
    // The client is done sending: the server sees end of input after it.
    write.shutdown().await.unwrap();
    let mut out = String::new();
    read.read_to_string(&mut out).await.unwrap();
    task.await.unwrap();
    out
}
