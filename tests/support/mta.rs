//! The MTA in front of the milter: the end-to-end scenarios run under each one.

use super::postfix::Postfix;
use super::sendmail::Sendmail;

/// Which MTA a scenario runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtaKind {
    Postfix,
    Sendmail,
}

/// A private MTA instance relaying to a capture server.
pub enum Mta {
    Postfix(Postfix),
    Sendmail(Sendmail),
}

impl Mta {
    /// Start `kind` relaying to `[127.0.0.1]:relay_port`, calling the milter at
    /// `milter_port` (`None`: no milter), as its example configuration says.
    pub fn start(kind: MtaKind, milter_port: Option<u16>, relay_port: u16) -> Mta {
        Mta::start_with(kind, milter_port, relay_port, None, "")
    }

    /// As [`Mta::start`], the bounce domains' mail to msys-milter's LMTP listener at
    /// `lmtp_port`, and `extra` configuration lines (Postfix: main.cf; Sendmail:
    /// sendmail.mc).
    pub fn start_with(
        kind: MtaKind,
        milter_port: Option<u16>,
        relay_port: u16,
        lmtp_port: Option<u16>,
        extra: &str,
    ) -> Mta {
        match kind {
            MtaKind::Postfix => Mta::Postfix(Postfix::start_with(
                milter_port,
                relay_port,
                lmtp_port,
                extra,
            )),
            MtaKind::Sendmail => Mta::Sendmail(Sendmail::start_with(
                milter_port,
                relay_port,
                lmtp_port,
                extra,
            )),
        }
    }

    pub fn kind(&self) -> MtaKind {
        match self {
            Mta::Postfix(_) => MtaKind::Postfix,
            Mta::Sendmail(_) => MtaKind::Sendmail,
        }
    }

    /// The port clients submit to (runs the milter).
    pub fn smtp_port(&self) -> u16 {
        match self {
            Mta::Postfix(p) => p.smtp_port,
            Mta::Sendmail(s) => s.smtp_port,
        }
    }

    /// The milter-free port personalised copies are handed to.
    pub fn reinject_port(&self) -> u16 {
        match self {
            Mta::Postfix(p) => p.reinject_port,
            Mta::Sendmail(s) => s.reinject_port,
        }
    }

    /// The MTA's log file, as `[feedback] mta_log` follows it.
    pub fn maillog_path(&self) -> std::path::PathBuf {
        match self {
            Mta::Postfix(p) => p.maillog_path(),
            Mta::Sendmail(s) => s.maillog_path(),
        }
    }

    /// Everything the MTA logged, for a failing test's message.
    pub fn log(&self) -> String {
        match self {
            Mta::Postfix(p) => p.log(),
            Mta::Sendmail(s) => s.log(),
        }
    }

    /// The Postfix instance; for Postfix-only scenarios.
    pub fn postfix(&self) -> &Postfix {
        match self {
            Mta::Postfix(p) => p,
            Mta::Sendmail(_) => panic!("a Postfix-only scenario ran under Sendmail"),
        }
    }

    /// The Sendmail instance; for Sendmail-only checks.
    pub fn sendmail(&self) -> &Sendmail {
        match self {
            Mta::Sendmail(s) => s,
            Mta::Postfix(_) => panic!("a Sendmail-only check ran under Postfix"),
        }
    }
}

/// Run each named scenario `fn name(MtaKind)` as a test under Postfix (`postfix::name`)
/// and under Sendmail (`sendmail::name`).
#[macro_export]
macro_rules! under_each_mta {
    ($($name:ident),* $(,)?) => {
        mod postfix {
            $( #[test] fn $name() { super::$name(super::support::mta::MtaKind::Postfix) } )*
        }
        mod sendmail {
            $( #[test] fn $name() { super::$name(super::support::mta::MtaKind::Sendmail) } )*
        }
    };
}
