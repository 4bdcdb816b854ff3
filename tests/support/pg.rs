//! A private, throwaway PostgreSQL cluster (Debian's `postgresql` package, installed by
//! scripts/test.sh): `initdb` and `pg_ctl` as the `postgres` user (the server refuses
//! root), listening only on a UNIX socket in its own directory, `fsync=off`, removed
//! when dropped. Never the system's own cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Pg {
    dir: tempfile::TempDir,
    pub port: u16,
    /// Also on 127.0.0.1 with TLS (a certificate from the test's own CA).
    tls: bool,
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    c
}

impl Pg {
    pub fn start() -> Pg {
        Self::start_with(false)
    }

    /// Also listening on 127.0.0.1 with TLS: a server certificate for 127.0.0.1 signed
    /// by a CA made for the test ([`Pg::ca`]).
    pub fn start_tls() -> Pg {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Pg {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed: run scripts/test.sh (it installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("msys-pg")
            .tempdir_in("/tmp")
            .unwrap();
        Command::new("chown")
            .args(["postgres:postgres", &dir.path().display().to_string()])
            .status()
            .unwrap();
        let data = dir.path().join("data");
        let out = as_postgres("initdb")
            .args([
                "-D",
                &data.display().to_string(),
                "-U",
                "msys",
                "-A",
                "trust",
                "-N",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Pg {
            port: super::postfix::free_port(),
            dir,
            tls,
        };
        if tls {
            pg.make_certificates();
        }
        pg.pg_ctl_start();
        pg
    }

    fn make_certificates(&self) {
        let d = self.dir.path();
        super::rest::make_certificates(d);
        for f in ["server.key", "server.pem"] {
            Command::new("chown")
                .args(["postgres:postgres", &d.join(f).display().to_string()])
                .status()
                .unwrap();
        }
        Command::new("chmod")
            .args(["600", &d.join("server.key").display().to_string()])
            .status()
            .unwrap();
    }

    /// The CA that signed the TLS server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `[store] postgres` over TCP and TLS (`sslmode=require`).
    pub fn tls_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=msys dbname=postgres sslmode=require",
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) {
        let out = as_postgres("pg_ctl")
            .args([
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-w",
                "start",
                "-o",
                &format!(
                    "-c listen_addresses='{}' -c unix_socket_directories='{}' -c port={} -c fsync=off -c full_page_writes=off -c max_connections=200{}",
                    if self.tls { "127.0.0.1" } else { "" },
                    self.dir.path().display(),
                    self.port,
                    if self.tls {
                        format!(
                            " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                            self.dir.path().join("server.pem").display(),
                            self.dir.path().join("server.key").display()
                        )
                    } else {
                        String::new()
                    }
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stop at once (as a crash would), keeping the data.
    pub fn stop(&self) {
        let _ = as_postgres("pg_ctl")
            .args([
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }

    /// Start again after [`Pg::stop`].
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// `[store] postgres` for the daemon.
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user=msys dbname=postgres",
            self.dir.path().display(),
            self.port
        )
    }

    /// Run SQL with psql; its output (unaligned, tuples only).
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new(format!("{BIN}/psql"))
            .args([
                "-h",
                &self.dir.path().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "msys",
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Wait until `sql` answers `want` (at most `secs` seconds); on timeout, fail with
    /// what `explain` answers.
    pub fn wait_until(&self, sql: &str, want: &str, secs: u64, explain: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while self.sql(sql) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{sql} is not {want} after {secs} s: {}",
                self.sql(explain)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}
