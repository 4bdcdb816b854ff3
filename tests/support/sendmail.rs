//! A private Sendmail 8.17 for one test, from Debian's packages unpacked with `dpkg -x`
//! (they conflict with postfix, so they are never installed; `scripts/test.sh` unpacks
//! them and names the directory in `MSYS_TEST_SENDMAIL_ROOT`). Its sendmail.cf is built
//! with m4 from `packaging/sendmail/msys-milter.mc`, the lines README tells admins to
//! add, plus test-only lines: its own queue, loopback ports, no DNS, everything relayed
//! to the capture server. It runs in the foreground (`-bD`) inside a UTS namespace with
//! an FQDN host name, in the tests' loopback-only network namespace.

use super::postfix::{assert_private_network, free_port, start_retrying};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const ROOT_VAR: &str = "MSYS_TEST_SENDMAIL_ROOT";

/// Where `scripts/test.sh` unpacked sendmail-bin, sendmail-base and sendmail-cf.
fn root() -> PathBuf {
    let root = std::env::var_os(ROOT_VAR).unwrap_or_else(|| {
        panic!("{ROOT_VAR} is not set: run the tests with `bash scripts/test.sh`, which unpacks Sendmail")
    });
    PathBuf::from(root)
}

pub struct Sendmail {
    dir: tempfile::TempDir,
    child: Child,
    /// The port clients submit to (runs the milter).
    pub smtp_port: u16,
    /// The milter-free re-injection port of packaging/sendmail/msys-milter.mc.
    pub reinject_port: u16,
}

impl Sendmail {
    /// Start Sendmail relaying everything to `[127.0.0.1]:relay_port`, with the milter of
    /// packaging/sendmail/msys-milter.mc at `milter_port` (`None`: no milter at all).
    pub fn start(milter_port: Option<u16>, relay_port: u16) -> Sendmail {
        Sendmail::start_with(milter_port, relay_port, None, "")
    }

    /// As [`Sendmail::start`], the bounce domain's mail to msys-milter's LMTP listener at
    /// `lmtp_port` (packaging/sendmail/msys-milter-feedback.mc), and `extra` .mc lines.
    pub fn start_with(
        milter_port: Option<u16>,
        relay_port: u16,
        lmtp_port: Option<u16>,
        extra: &str,
    ) -> Sendmail {
        Sendmail::launch(milter_port, relay_port, lmtp_port, extra, true)
    }

    /// As [`Sendmail::start_with`] without the SMTP traffic log, which would weigh on
    /// a benchmark.
    pub fn start_for_benchmark(milter_port: Option<u16>, relay_port: u16, extra: &str) -> Sendmail {
        Sendmail::launch(milter_port, relay_port, None, extra, false)
    }

    fn launch(
        milter_port: Option<u16>,
        relay_port: u16,
        lmtp_port: Option<u16>,
        extra: &str,
        traffic: bool,
    ) -> Sendmail {
        assert_private_network();
        start_retrying("Sendmail", || {
            Sendmail::try_start(milter_port, relay_port, lmtp_port, extra, traffic)
        })
    }

    fn try_start(
        milter_port: Option<u16>,
        relay_port: u16,
        lmtp_port: Option<u16>,
        extra: &str,
        traffic: bool,
    ) -> Result<Sendmail, String> {
        let root = root();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Sendmail refuses a queue directory others can read.
        let queue = d.join("queue");
        std::fs::create_dir(&queue).unwrap();
        std::fs::set_permissions(&queue, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        // Host names come from this file only: no DNS query can leave.
        std::fs::write(d.join("service.switch"), "hosts files\naliases files\n").unwrap();
        std::fs::write(d.join("hosts"), "127.0.0.1 localhost mta.e2e.test\n").unwrap();
        let smtp_port = free_port();
        let reinject_port = free_port();
        let cf_dir = root.join("usr/share/sendmail/cf");
        let dd = d.display();
        let mut mc = format!(
            "divert(-1)\n\
             include(`{}/m4/cf.m4')dnl\n\
             divert(0)dnl\n\
             VERSIONID(`msys-milter end-to-end test')dnl\n\
             OSTYPE(`linux')dnl\n\
             define(`confDOMAIN_NAME', `mta.e2e.test')dnl\n\
             define(`QUEUE_DIR', `{dd}/queue')dnl\n\
             define(`STATUS_FILE', `{dd}/statistics')dnl\n\
             define(`confPID_FILE', `{dd}/sendmail.pid')dnl\n\
             define(`confSERVICE_SWITCH_FILE', `{dd}/service.switch')dnl\n\
             define(`confHOSTS_FILE', `{dd}/hosts')dnl\n\
             define(`confDONT_PROBE_INTERFACES', `True')dnl\n\
             define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl\n\
             undefine(`ALIAS_FILE')dnl\n\
             define(`SMART_HOST', `relay:[127.0.0.1]')dnl\n\
             define(`RELAY_MAILER_ARGS', `TCP $h {relay_port}')dnl\n\
             FEATURE(`no_default_msa')dnl\n\
             FEATURE(`nocanonify')dnl\n\
             FEATURE(`accept_unresolvable_domains')dnl\n\
             DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={smtp_port}, Addr=127.0.0.1, Listen=1024')dnl\n",
            cf_dir.display()
        );
        if let Some(port) = milter_port {
            let lines = packaging_file("msys-milter.mc");
            let lines = replace_in(
                &lines,
                "inet:8895@127.0.0.1",
                &format!("inet:{port}@127.0.0.1"),
            );
            mc.push_str(&replace_in(
                &lines,
                "Port=10026",
                &format!("Port={reinject_port}"),
            ));
        }
        if let Some(port) = lmtp_port {
            let lines = packaging_file("msys-milter-feedback.mc");
            mc.push_str(&replace_in(
                &lines,
                "A=TCP $h 2424",
                &format!("A=TCP $h {port}"),
            ));
        }
        mc.push_str(extra);
        mc.push_str("MAILER(`smtp')dnl\n");
        std::fs::write(d.join("sendmail.mc"), &mc).unwrap();
        let cf = Command::new("m4")
            .arg(d.join("sendmail.mc"))
            .output()
            .expect("m4 (scripts/test.sh installs it)");
        assert!(
            cf.status.success(),
            "m4: {}",
            String::from_utf8_lossy(&cf.stderr)
        );
        std::fs::write(d.join("sendmail.cf"), &cf.stdout).unwrap();
        let stderr = std::fs::File::create(d.join("stderr")).unwrap();
        let dev = d.join("dev");
        std::fs::create_dir(&dev).unwrap();
        collect_syslog(&dev.join("log"), &d.join("maillog"));
        // Its own UTS namespace: a fully qualified host name, so Sendmail never waits
        // to qualify its name at start. Its own mount namespace: a /dev whose `log` is
        // the collector's socket (Sendmail logs only through syslog(3)), with the few
        // devices Sendmail opens bound from the real /dev.
        let setup = "set -e; hostname mta.e2e.test; mount --make-rprivate /; \
                     for n in null zero random urandom full; do \
                     touch \"$DEV/$n\"; mount --bind \"/dev/$n\" \"$DEV/$n\"; done; \
                     mount --rbind \"$DEV\" /dev; exec \"$@\"";
        let mut command = Command::new("unshare");
        command
            .arg("--uts")
            .arg("--mount")
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(setup)
            .env("DEV", &dev)
            .arg("sh")
            .arg(root.join("usr/libexec/sendmail/sendmail"))
            .arg("-C")
            .arg(d.join("sendmail.cf"))
            .arg("-bD");
        if traffic {
            command.arg("-X").arg(d.join("traffic"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().unwrap())
            .stderr(stderr)
            .spawn()
            .expect("unshare (util-linux)");
        let mut sendmail = Sendmail {
            dir,
            child,
            smtp_port,
            reinject_port,
        };
        let ports = if milter_port.is_some() {
            vec![smtp_port, reinject_port]
        } else {
            vec![smtp_port]
        };
        for port in ports {
            if let Err(e) = sendmail.wait_for_port(port) {
                return Err(format!("{e}\n{}", sendmail.log()));
            }
        }
        Ok(sendmail)
    }

    fn wait_for_port(&mut self, port: u16) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "sendmail exited ({status}) before listening on {port}"
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("sendmail did not listen on {port}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// What Sendmail printed, its log, and its SMTP traffic log (`-X`: every command
    /// and line of every session, the re-injected copies included).
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "{}--- syslog ---\n{}--- traffic ---\n{}",
            read("stderr"),
            read("maillog"),
            read("traffic")
        )
    }

    /// Sendmail's syslog messages as a syslog daemon writes them to mail.log.
    pub fn maillog_path(&self) -> PathBuf {
        self.dir.path().join("maillog")
    }

    /// The SMTP traffic log (`-X`).
    pub fn traffic(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("traffic")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// No message is in the queue (every one delivered).
    pub fn queue_is_empty(&self) -> bool {
        std::fs::read_dir(self.dir.path().join("queue")).is_ok_and(|entries| {
            !entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("qf"))
        })
    }

    /// Release every quarantined message and deliver it, with the commands README gives
    /// (`sendmail -Q -qQ -qI<id>`, then a queue run for it). Run as Sendmail always
    /// runs here: in a UTS namespace with the FQDN host name.
    pub fn release_quarantined(&self) {
        let queue = self.dir.path().join("queue");
        let ids: Vec<String> = std::fs::read_dir(&queue)
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("hf").map(str::to_owned)
            })
            .collect();
        let sendmail = root().join("usr/libexec/sendmail/sendmail");
        for id in ids {
            for args in [vec!["-Q", "-qQ"], vec!["-q"]] {
                let out = Command::new("unshare")
                    .args([
                        "--uts",
                        "--",
                        "sh",
                        "-c",
                        "hostname mta.e2e.test && exec \"$@\"",
                        "sh",
                    ])
                    .arg(&sendmail)
                    .arg("-C")
                    .arg(self.dir.path().join("sendmail.cf"))
                    .args(&args)
                    .arg(format!("-qI{id}"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "sendmail {args:?} -qI{id}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// The quarantined messages: (recipient, quarantine reason) for each recipient of
    /// each. Sendmail renames a quarantined queue file from `qf<ID>` to `hf<ID>`; in it
    /// a `q` line holds the reason and each `R` line a recipient (`R<flags>:<address>`).
    pub fn quarantined(&self) -> Vec<(String, String)> {
        let mut held = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("queue")) else {
            return held;
        };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_name().to_string_lossy().starts_with("hf") {
                continue;
            }
            // Not UTF-8: Sendmail writes macro references as single bytes.
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let reason = text
                .lines()
                .find_map(|l| l.strip_prefix('q'))
                .unwrap_or_default();
            for line in text.lines().filter(|l| l.starts_with('R')) {
                let address = line.split_once(':').map_or(line, |(_, a)| a);
                let address = address.trim_start_matches('<').trim_end_matches('>');
                held.push((address.to_owned(), reason.to_owned()));
            }
        }
        held
    }
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        // SIGTERM: the daemon stops; unshare exec'd into it, so this is Sendmail itself.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- Sendmail log ---\n{}", self.log());
        }
    }
}

/// `text` with `from` replaced: the package's lines must still say `from`, or the test
/// would run with a port nobody listens on.
fn replace_in(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the packaged .mc lines no longer contain `{from}`"
    );
    text.replace(from, to)
}

/// The `.mc` lines of the package, as README tells Sendmail admins to add them.
fn packaging_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/sendmail")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Receive syslog datagrams on `socket` and append them to `file` as rsyslog writes
/// mail.log (`Dec  2 16:52:24 mta.e2e.test sm-mta[812]: ...`). The thread lives as long
/// as the test process.
fn collect_syslog(socket: &Path, file: &Path) {
    use std::io::Write as _;
    let receiver = std::os::unix::net::UnixDatagram::bind(socket).unwrap();
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = receiver.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            // `<PRI>Mmm dd hh:mm:ss TAG[PID]: MESSAGE`
            let text = text.split_once('>').map_or(&*text, |(_, t)| t);
            let (stamp, message) = if text.len() > 16 && text.is_char_boundary(16) {
                text.split_at(16)
            } else {
                ("", text)
            };
            let line = format!("{stamp}mta.e2e.test {}\n", message.trim_end());
            if out.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
    });
}
