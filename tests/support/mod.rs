//! Shared parts of the end-to-end tests: a capture SMTP server, a private Postfix, the
//! real `msys-milter` binary, and a real SMTP client (lettre).

#![allow(dead_code)] // Each test binary uses its own subset.

pub mod anymail;
pub mod capture;
pub mod e2e;
pub mod lmtp;
pub mod mta;
pub mod pg;
pub mod postfix;
pub mod rest;
pub mod sendmail;
pub mod shared;
pub mod webhook;

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Write `text` to `dir/name` as an executable script (a stand-in for sendmail(1)); its
/// path.
pub fn script(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The real daemon, started with a config file; stopped (SIGTERM) when dropped.
pub struct Milter {
    child: Option<Child>,
    pub port: u16,
    config: tempfile::NamedTempFile,
    log: std::path::PathBuf,
    env: Vec<(String, String)>,
    /// `RLIMIT_NOFILE` (soft and hard) the daemon starts with, when set.
    nofile: Option<u64>,
    /// The daemon's state directory (`$STATE_DIRECTORY`): its own store, kept across
    /// restarts.
    pub state: tempfile::TempDir,
}

impl Milter {
    /// Start `msys-milter --config FILE` with `toml` on a free port, and wait until it
    /// accepts connections.
    pub fn start(toml: &str) -> Milter {
        Self::start_on(postfix::free_port(), toml)
    }

    pub fn start_on(port: u16, toml: &str) -> Milter {
        Self::start_with_env(port, toml, &[])
    }

    /// Start with extra environment variables (e.g. `MAIL_CONFIG` for sendmail(1)).
    pub fn start_with_env(port: u16, toml: &str, env: &[(&str, &str)]) -> Milter {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch(port, toml.as_bytes(), env)
    }

    /// Start with its descriptor limit at `nofile`, soft and hard (so it cannot raise
    /// it), as a service started without `LimitNOFILE` gets it.
    pub fn start_limited(port: u16, toml: &str, nofile: u64) -> Milter {
        let mut milter = Self::prepare(port, toml.as_bytes(), Vec::new());
        milter.nofile = Some(nofile);
        milter.spawn();
        milter
    }

    /// Start with the configuration file `path` as it is; `--socket` picks the port.
    pub fn start_with_file(port: u16, path: &Path) -> Milter {
        Self::launch(port, &std::fs::read(path).unwrap(), Vec::new())
    }

    fn launch(port: u16, config_text: &[u8], env: Vec<(String, String)>) -> Milter {
        let mut milter = Self::prepare(port, config_text, env);
        milter.spawn();
        milter
    }

    fn prepare(port: u16, config_text: &[u8], env: Vec<(String, String)>) -> Milter {
        let mut config = tempfile::NamedTempFile::new().unwrap();
        config.write_all(config_text).unwrap();
        let log = config.path().with_extension("log");
        Milter {
            child: None,
            port,
            config,
            log,
            env,
            nofile: None,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_msys-milter"));
        if let Some(nofile) = self.nofile {
            use std::os::unix::process::CommandExt as _;
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            // SAFETY: between fork and exec only `setrlimit`, which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command
            .env("STATE_DIRECTORY", self.state.path())
            .envs(self.env.iter().cloned())
            .arg("--config")
            .arg(self.config.path())
            .arg("--socket")
            .arg(format!("inet:127.0.0.1:{}", self.port))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "milter did not start:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stop the daemon (SIGTERM) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Kill the daemon with SIGKILL (no chance to finish anything), then start it again
    /// on the same port with the same configuration and state.
    pub fn kill9_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// The environment of the next start (`restart`, `kill9_and_restart`) is `env`.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Wait until the daemon's process has ended (a crash), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// Kill the daemon with SIGKILL, as a crash or the OOM killer would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Its store file (in its state directory).
    pub fn store_path(&self) -> std::path::PathBuf {
        self.state.path().join("msys-milter.db")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The configuration file it reads (again on SIGHUP).
    pub fn config_path(&self) -> &Path {
        self.config.path()
    }

    /// Ask it to reload its configuration (SIGHUP).
    pub fn hup(&self) {
        let _ = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status();
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- milter log ---\n{}", self.log());
        }
    }
}

/// Send `message` with a real SMTP client (lettre). `Err` carries the server's reply
/// as lettre reports it (code and text).
pub fn send(port: u16, from: &str, rcpts: &[&str], message: &str) -> Result<String, String> {
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .build();
    let from = if from.is_empty() {
        None
    } else {
        Some(from.parse().unwrap())
    };
    let envelope = Envelope::new(from, rcpts.iter().map(|r| r.parse().unwrap()).collect()).unwrap();
    let message = message.replace("\r\n", "\n").replace('\n', "\r\n");
    // lettre ends the data with CRLF.CRLF itself.
    let message = message.strip_suffix("\r\n").unwrap_or(&message);
    transport
        .send_raw(&envelope, message.as_bytes())
        .map(|r| format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" ")))
        .map_err(|e| e.to_string())
}

/// A message with the usual headers and `extra` ones before the body.
pub fn message(extra: &str, body: &str) -> String {
    format!(
        "From: App <app@example.com>\nTo: Someone <to@example.org>\nSubject: e2e\n{extra}\n{body}"
    )
}

/// The config directory of an example file.
pub fn example_path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("postfix-example")
        .join(name)
}

/// The milter in this process on a free loopback port (for indymilter-test), with
/// configuration `toml`; it runs until the test ends.
pub async fn start_in_process(toml: &str) -> std::net::SocketAddr {
    use msys_milter::config::{Config, SocketSpec};
    let mut config = Config::parse(toml, Path::new("test.toml")).unwrap();
    config.socket = SocketSpec::Inet("127.0.0.1:0".into());
    if config.store.path.is_none() {
        config.store.path = Some(tempfile::tempdir().unwrap().keep().join("store.db"));
    }
    let socket = msys_milter::milter::BoundSocket::bind(&config.socket)
        .await
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let (listener, _guard) = socket.into_parts();
    tokio::spawn(msys_milter::run(
        listener,
        config,
        std::future::pending::<()>(),
    ));
    addr
}

/// An MTA-side milter connection (indymilter-test) offering every action.
pub async fn connect_in_process(addr: std::net::SocketAddr) -> indymilter_test::TestConnection {
    indymilter_test::TestConnection::configure()
        .read_timeout(std::time::Duration::from_secs(20))
        .available_actions(indymilter_test::Actions::all())
        .open_tcp(addr)
        .await
        .unwrap()
}

/// The values of the headers named `wanted` that the milter's actions add.
pub fn added_headers(actions: &[indymilter_test::EomAction], wanted: &str) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            indymilter_test::EomAction::AddHeader { name, value }
                if name.to_bytes() == wanted.as_bytes() =>
            {
                Some(value.to_string_lossy().into_owned())
            }
            _ => None,
        })
        .collect()
}

/// A milter transaction over the protocol (indymilter-test) against the daemon on
/// `port`, as an MTA would run it: its end-of-message status.
pub fn milter_transaction(port: u16) -> indymilter_test::Status {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = indymilter_test::TestConnection::configure()
            .read_timeout(std::time::Duration::from_secs(10))
            .available_actions(indymilter_test::Actions::all())
            .open_tcp(("127.0.0.1", port))
            .await
            .unwrap();
        conn.mail(["<app@example.com>"]).await.unwrap();
        conn.rcpt(["<to@example.org>"]).await.unwrap();
        conn.header("From", "app@example.com").await.unwrap();
        conn.header("X-MSYS-API", "{\"campaign_id\": \"milter\"}")
            .await
            .unwrap();
        let (_, status) = conn.eom().await.unwrap();
        let _ = conn.close().await;
        status
    })
}
