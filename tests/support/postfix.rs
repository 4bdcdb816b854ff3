//! A private Postfix instance for one test: its own configuration, queue and data
//! directories under a temporary directory, loopback ports chosen free, no chroot,
//! logging to a file. Built from the Debian package's master.cf and the project's
//! `postfix-example/` files, so the tests exercise what the README tells admins to add.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where [`free_port`] looks: below Linux's ephemeral range (32768-60999), so no
/// outgoing connection's local port takes a picked port before its server binds it
/// (that raced once in CI: the kernel's port-0 pick is from the ephemeral range).
const PICKED_PORTS: std::ops::Range<u16> = 20000..32000;

/// A loopback port nobody listens on right now, and never handed out before by this
/// process: tests running in parallel never pick the same one.
pub fn free_port() -> u16 {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    const SPAN: u32 = (PICKED_PORTS.end - PICKED_PORTS.start) as u32;
    // Processes start at different places (their pid), so two test binaries run at
    // once seldom walk the same ports.
    static NEXT: LazyLock<AtomicU32> = LazyLock::new(|| AtomicU32::new(std::process::id() % SPAN));
    for _ in 0..SPAN {
        let port = PICKED_PORTS.start + (NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PICKED_PORTS:?}");
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("postfix-example")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Start an MTA with `try_start`, again (on other ports) if it fails: a port picked
/// free can be taken by another test's connection before the MTA binds it.
pub fn start_retrying<T>(mta: &str, mut try_start: impl FnMut() -> Result<T, String>) -> T {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_start() {
            Ok(started) => return started,
            Err(log) if attempt < 4 => eprintln!("{mta} did not start (retrying): {log}"),
            Err(log) => panic!("{mta} did not start:\n{log}"),
        }
    }
}

/// Refuse to start an MTA outside a private network namespace: it would resolve its
/// host name and could reach other hosts. `scripts/test.sh` runs the tests inside one.
pub fn assert_private_network() {
    // /proc/net/dev lists the interfaces of this process's network namespace.
    let interfaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|i| i.trim().to_owned()))
        .collect();
    assert!(
        interfaces.iter().all(|i| i == "lo"),
        "end-to-end tests start an MTA and must run in a network namespace with only \
         loopback: run them with `bash scripts/test.sh` (found interfaces {interfaces:?})"
    );
}

fn assert_postfix_installed() {
    assert!(
        Path::new("/usr/sbin/postfix").exists(),
        "Postfix is not installed: `bash scripts/test.sh` installs it"
    );
}

pub struct Postfix {
    dir: tempfile::TempDir,
    /// The port clients submit to (smtpd with the milter).
    pub smtp_port: u16,
    /// The re-injection listener's port (postfix-example/master.cf, no milters).
    pub reinject_port: u16,
}

impl Postfix {
    /// Start Postfix relaying everything to `[127.0.0.1]:relay_port`, with the milter of
    /// postfix-example/main.cf at `milter_port` (`None`: no milter at all).
    pub fn start(milter_port: Option<u16>, relay_port: u16) -> Postfix {
        Postfix::start_with(milter_port, relay_port, None, "")
    }

    /// As [`Postfix::start`], the bounce domain's mail to msys-milter's LMTP listener at
    /// `lmtp_port` (postfix-example/main.cf), and `extra` main.cf lines.
    pub fn start_with(
        milter_port: Option<u16>,
        relay_port: u16,
        lmtp_port: Option<u16>,
        extra: &str,
    ) -> Postfix {
        assert_private_network();
        assert_postfix_installed();
        start_retrying("Postfix", || {
            Postfix::try_start(milter_port, relay_port, lmtp_port, extra)
        })
    }

    fn try_start(
        milter_port: Option<u16>,
        relay_port: u16,
        lmtp_port: Option<u16>,
        extra: &str,
    ) -> Result<Postfix, String> {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let smtp_port = free_port();
        let reinject_port = free_port();
        let d = dir.path().display();
        let mut main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mta.e2e.test\n\
             mydomain = e2e.test\n\
             myorigin = $myhostname\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost = [127.0.0.1]:{relay_port}\n\
             smtp_dns_support_level = disabled\n\
             smtputf8_enable = yes\n\
             alias_maps =\n\
             biff = no\n"
        );
        if let Some(port) = milter_port {
            // Without a listener the bounce domain's mail waits in the queue.
            let lmtp = lmtp_port.unwrap_or_else(free_port);
            main_cf.push_str(
                &example("main.cf")
                    .replace("127.0.0.1:8895", &format!("127.0.0.1:{port}"))
                    .replace("127.0.0.1:2424", &format!("127.0.0.1:{lmtp}")),
            );
        }
        let main_cf = with_overrides(&main_cf, extra);
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        let master = master_cf(smtp_port)
            + &example("master.cf")
                .replace("127.0.0.1:10026", &format!("127.0.0.1:{reinject_port}"));
        std::fs::write(conf.join("master.cf"), master).unwrap();
        // Postfix's processes run as the mail owner and keep their lock files there.
        Command::new("chown")
            .arg("postfix")
            .arg(dir.path().join("data"))
            .status()
            .unwrap();
        let postfix = Postfix {
            dir,
            smtp_port,
            reinject_port,
        };
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(postfix.conf_dir())
            .arg("start")
            .output()
            .unwrap();
        if !out.status.success() {
            let log = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                postfix.log()
            );
            // Whatever did start is stopped when `postfix` is dropped.
            return Err(log);
        }
        postfix.wait_for_port(smtp_port);
        Ok(postfix)
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    /// Run `postfix -c CONF <args>`; fails the test with the log on error.
    pub fn postfix(&self, args: &[&str]) {
        self.run("/usr/sbin/postfix", args);
    }

    /// Run `postsuper -c CONF <args>` (e.g. `-H ALL` releases held mail).
    pub fn postsuper(&self, args: &[&str]) {
        self.run("/usr/sbin/postsuper", args);
    }

    /// Run one of Postfix's commands on this instance; fails the test with the log on
    /// error.
    fn run(&self, command: &str, args: &[&str]) {
        let out = Command::new(command)
            .arg("-c")
            .arg(self.conf_dir())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Edit master.cf with `edit` and reload.
    pub fn edit_master_cf(&self, edit: impl FnOnce(String) -> String) {
        let path = self.conf_dir().join("master.cf");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
        self.postfix(&["reload"]);
    }

    pub fn wait_for_port(&self, port: u16) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "Postfix did not listen on {port}:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Postfix's log so far.
    /// Postfix's own log file (`maillog_file`).
    pub fn maillog_path(&self) -> PathBuf {
        self.dir.path().join("maillog")
    }

    /// Postfix's log once `done` holds for it (postlogd writes a line a moment after
    /// the event), or after 10 s as it is then.
    pub fn log_when(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.log();
            if done(&log) || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// No message is waiting in any queue (cheaper to poll than `postqueue -p`).
    pub fn queue_is_empty(&self) -> bool {
        fn has_files(dir: &Path) -> bool {
            std::fs::read_dir(dir).is_ok_and(|entries| {
                entries.filter_map(Result::ok).any(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        has_files(&path)
                    } else {
                        true
                    }
                })
            })
        }
        let queue = self.dir.path().join("queue");
        !["maildrop", "incoming", "active", "deferred"]
            .iter()
            .any(|q| has_files(&queue.join(q)))
    }

    /// Messages still in the queue (`postqueue -p`).
    pub fn queue(&self) -> String {
        let out = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.conf_dir())
            .arg("-p")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.conf_dir())
            .arg("stop")
            .output();
        if std::thread::panicking() {
            eprintln!("--- Postfix log ---\n{}", self.log());
        }
    }
}

/// The Debian package's master.cf, with smtpd on `127.0.0.1:smtp_port` and no chroot
/// (the private instance has no chroot jail set up).
fn master_cf(smtp_port: u16) -> String {
    let dist = std::fs::read_to_string("/usr/share/postfix/master.cf.dist")
        .expect("Postfix's master.cf.dist (Debian package postfix)");
    let mut out = String::new();
    for line in dist.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let service_line = !line.starts_with([' ', '\t', '#']) && fields.len() >= 8;
        if service_line {
            let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            if fields[0] == "smtp" && fields[1] == "inet" {
                fields[0] = format!("127.0.0.1:{smtp_port}");
            }
            if fields[4] == "y" || fields[4] == "-" {
                fields[4] = "n".into();
            }
            out.push_str(&fields.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// `base` with `extra`'s main.cf lines appended, each parameter `extra` sets taken out
/// of `base` first (with its continuation lines). A parameter set twice makes every
/// Postfix process log "overriding earlier entry" as it starts; those lines can fill
/// postlogd's socket (10 datagrams here), and postlogd, logging the same warning to
/// itself, then waits on its own socket for ever (seen as a `postfix stop` that hung).
pub fn with_overrides(base: &str, extra: &str) -> String {
    let name = |line: &str| -> Option<String> {
        let (name, _) = line.split_once('=')?;
        let name = name.trim();
        (!line.starts_with(char::is_whitespace) && !name.is_empty() && !name.starts_with('#'))
            .then(|| name.to_owned())
    };
    let overridden: std::collections::HashSet<String> = extra.lines().filter_map(name).collect();
    let mut out = String::with_capacity(base.len() + extra.len());
    let mut skipping = false;
    for line in base.lines() {
        let continuation = line.starts_with(char::is_whitespace) && !line.trim().is_empty();
        if !continuation {
            skipping = name(line).is_some_and(|n| overridden.contains(&n));
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra);
    out
}
