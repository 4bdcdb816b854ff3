//! A capture server, a private Postfix and the real milter, started together.

use super::capture::Capture;
use super::mta::{Mta, MtaKind};
use super::postfix::{Postfix, free_port};
use super::{Milter, send};

/// Capture server, an MTA with the milter, the milter with `toml` (its re-injection
/// target set to this MTA's milter-free listener).
pub struct E2e {
    pub capture: Capture,
    pub mta: Mta,
    pub milter: Milter,
}

impl E2e {
    /// Under Postfix; copies go to the re-injection listener of postfix-example/master.cf.
    pub fn start(toml: &str) -> E2e {
        E2e::start_under(MtaKind::Postfix, toml)
    }

    /// Under `kind`, configured as its example files say.
    pub fn start_under(kind: MtaKind, toml: &str) -> E2e {
        let capture = Capture::start();
        let milter_port = free_port();
        let mta = Mta::start(kind, Some(milter_port), capture.port);
        let marker = loop_marker(kind);
        let milter = Milter::start_on(
            milter_port,
            &format!(
                "{toml}\n[reinject]\nsmtp = \"127.0.0.1:{}\"\ntimeout = 10\n{marker}",
                mta.reinject_port()
            ),
        );
        E2e {
            capture,
            mta,
            milter,
        }
    }

    /// The Postfix instance (Postfix-only scenarios).
    pub fn postfix(&self) -> &Postfix {
        self.mta.postfix()
    }

    /// With the feedback loop wired as postfix-example shows: the bounce domain's mail
    /// goes to the milter's LMTP listener; the capture server answers `replies` to some
    /// recipients; `main_cf` is appended to Postfix's main.cf.
    pub fn start_feedback(toml: &str, replies: &[(&str, &str)], main_cf: &str) -> E2e {
        E2e::start_feedback_under(MtaKind::Postfix, toml, replies, main_cf)
    }

    /// As [`E2e::start_feedback`] under `kind`; `extra` is appended to its configuration
    /// (Postfix: main.cf; Sendmail: sendmail.mc), and its log is `[feedback] mta_log`.
    pub fn start_feedback_under(
        kind: MtaKind,
        toml: &str,
        replies: &[(&str, &str)],
        extra: &str,
    ) -> E2e {
        let capture = Capture::start_with_replies(replies);
        let milter_port = free_port();
        let lmtp_port = free_port();
        let mta = Mta::start_with(
            kind,
            Some(milter_port),
            capture.port,
            Some(lmtp_port),
            extra,
        );
        let marker = loop_marker(kind);
        let milter = Milter::start_on(
            milter_port,
            &format!(
                "{toml}\n[reinject]\nsmtp = \"127.0.0.1:{}\"\ntimeout = 10\nsecret = \"e2e-reinject-secret-0123456789\"\n{marker}\
                 [feedback]\nlmtp = \"127.0.0.1:{lmtp_port}\"\nmta_log = \"{}\"\n",
                mta.reinject_port(),
                mta.maillog_path().display()
            ),
        );
        E2e {
            capture,
            mta,
            milter,
        }
    }

    /// Copies go through this Postfix's sendmail(1).
    pub fn start_with_sendmail(toml: &str) -> E2e {
        E2e::start_with_sendmail_at(toml, "/usr/sbin/sendmail", "", "")
    }

    /// Copies go through `sendmail` (which calls this Postfix's sendmail(1)), with
    /// `reinject` added to `[reinject]` and `main_cf` to Postfix's main.cf. Locally
    /// submitted mail goes pickup -> cleanup, which drops Bcc: headers: as README tells
    /// sendmail users, pickup gets the re-injection cleanup service.
    pub fn start_with_sendmail_at(
        toml: &str,
        sendmail: &str,
        reinject: &str,
        main_cf: &str,
    ) -> E2e {
        let capture = Capture::start();
        let milter_port = free_port();
        let postfix = Postfix::start_with(Some(milter_port), capture.port, None, main_cf);
        postfix.edit_master_cf(|m| {
            m.replace(
                "pickup unix n - n 60 1 pickup\n",
                "pickup unix n - n 60 1 pickup\n  -o cleanup_service_name=cleanup-reinject\n",
            )
        });
        let conf = postfix.conf_dir().display().to_string();
        let milter = Milter::start_with_env(
            milter_port,
            &format!("{toml}\n[reinject]\nsendmail = \"{sendmail}\"\ntimeout = 10\n{reinject}"),
            &[("MAIL_CONFIG", &conf)],
        );
        E2e {
            capture,
            mta: Mta::Postfix(postfix),
            milter,
        }
    }

    pub fn send(&self, from: &str, rcpts: &[&str], msg: &str) -> Result<String, String> {
        send(self.mta.smtp_port(), from, rcpts, msg)
    }

    /// Wait for `count` deliveries and check no more came: one per address.
    pub fn wait_for_exactly(&self, count: usize) {
        let got = self.capture.wait_for_deliveries(count);
        let total: usize = got.iter().map(|r| r.rcpts.len()).sum();
        assert_eq!(total, count, "exactly one delivery per address: {got:#?}");
    }

    /// Nothing was delivered.
    pub fn assert_nothing_delivered(&self) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert!(self.capture.all().is_empty(), "{:#?}", self.capture.all());
    }
}

/// The `[reinject]` line README gives each MTA's admins: Sendmail's re-injection port
/// runs no milter and Sendmail cannot strip the loop marker, so its copies carry none.
fn loop_marker(kind: MtaKind) -> &'static str {
    match kind {
        MtaKind::Postfix => "",
        MtaKind::Sendmail => "loop_marker = false\n",
    }
}

/// A raw HTTP GET on loopback: (status, the Location header).
pub fn http_get(port: u16, path: &str) -> (u16, Option<String>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\r\nConnection: close\r\n\r\n").unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let response = String::from_utf8_lossy(&bytes);
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let location = response
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(str::to_owned);
    (status, location)
}
