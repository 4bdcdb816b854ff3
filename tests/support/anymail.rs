//! django-anymail's SparkPost tracking webhook, in a small Django app (installed by
//! `scripts/test.sh` into a throwaway virtualenv): the real consumer of our events.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// django-anymail's SparkPost tracking webhook, in a small Django app.
pub struct Anymail {
    child: Child,
    pub port: u16,
    out: tempfile::NamedTempFile,
}

pub const SECRET: &str = "hookuser:hookpass";

impl Anymail {
    pub fn start() -> Anymail {
        let python = std::env::var("MSYS_TEST_ANYMAIL_PYTHON").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/anymail-venv/bin/python"
            )
            .to_owned()
        });
        assert!(
            std::path::Path::new(&python).exists(),
            "{python} is missing: run `bash scripts/test.sh`, which installs django-anymail \
             (tests/anymail/setup-venv.sh target/anymail-venv)"
        );
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/anymail/receiver.py"
            ))
            .arg("0")
            .env("ANYMAIL_SECRET", SECRET)
            .env("OUT_FILE", out.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("anymail receiver: {line:?}"))
            .parse()
            .unwrap();
        Anymail { child, port, out }
    }

    /// What anymail's `tracking` signal produced so far.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.out.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait for an event of `event_type` for `recipient` (and `extra` to hold).
    pub fn wait_for(
        &self,
        event_type: &str,
        recipient: &str,
        extra: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["event_type"] == event_type && e["recipient"] == recipient && extra(e))
            {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {event_type} for {recipient}; anymail got {:#?}",
                self.events()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Anymail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
