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
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    c
}

impl Pg {
    pub fn start() -> Pg {
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
        };
        pg.pg_ctl_start();
        pg
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
                    "-c listen_addresses='' -c unix_socket_directories='{}' -c port={} -c fsync=off -c full_page_writes=off -c max_connections=200",
                    self.dir.path().display(),
                    self.port
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}
