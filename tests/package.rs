//! The installed Debian package (scripts/test-package.sh installs it, runs this test
//! inside the loopback-only namespace, then purges it): the binary started exactly as
//! the unit's ExecStart says, as the unit's user, with the installed configuration,
//! behind a private Postfix, then a private Sendmail; a message goes through it. The two
//! tests share the installed configuration's port: run them one at a time.

mod support;

use support::capture::Capture;
use support::message;
use support::mta::{Mta, MtaKind};

const UNIT: &str = "/usr/lib/systemd/system/msys-milter.service";

fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= in {UNIT}"))
        .to_owned()
}

#[test]
#[ignore = "needs the installed package: run scripts/test-package.sh"]
fn the_installed_package_runs_as_its_unit_says_behind_postfix() {
    the_installed_package_runs_as_its_unit_says(MtaKind::Postfix);
}

#[test]
#[ignore = "needs the installed package: run scripts/test-package.sh"]
fn the_installed_package_runs_as_its_unit_says_behind_sendmail() {
    the_installed_package_runs_as_its_unit_says(MtaKind::Sendmail);
}

fn the_installed_package_runs_as_its_unit_says(kind: MtaKind) {
    let unit = std::fs::read_to_string(UNIT).expect("the package is installed");
    let exec = unit_value(&unit, "ExecStart");
    let user = unit_value(&unit, "User");
    let wanted: u64 = unit_value(&unit, "LimitNOFILE").parse().unwrap();
    assert!(wanted >= 65_536, "{wanted}");
    // As systemd would, within what this machine lets us raise to (a sandbox without
    // CAP_SYS_RESOURCE cannot go past its own hard limit).
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `own` only.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    let nofile = wanted.min(own.rlim_max);
    let mut words = exec.split_whitespace();
    let program = words.next().unwrap();
    // setpriv execs the daemon itself (runuser would fork and outlive a kill); prlimit
    // gives it the unit's descriptor limit, as systemd does.
    let mut child = std::process::Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .args([
            "--",
            "setpriv",
            "--reuid",
            &user,
            "--regid",
            &user,
            "--init-groups",
            "--",
            program,
        ])
        .args(words)
        .env("STATE_DIRECTORY", "/var/lib/msys-milter")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The installed configuration listens on inet:127.0.0.1:8895.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", 8895)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not listen on 8895"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let capture = Capture::start();
    let mta = Mta::start(kind, Some(8895), capture.port);
    let result = support::send(
        mta.smtp_port(),
        "app@example.com",
        &["to@example.org"],
        &message("X-MSYS-API: {\"campaign_id\": \"installed\"}\n", "Hello\n"),
    );
    let got = result.map(|_| capture.wait_for_deliveries(1));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let got = got.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(
        got[0].header("X-MSYS-API").is_empty(),
        "the milter ran: {}",
        got[0].text()
    );
    assert!(
        log.contains("store opened") && log.contains("/var/lib/msys-milter"),
        "{log}"
    );
    assert!(
        log.contains("descriptor limit") && log.contains(&format!("soft={nofile}")),
        "the daemon logs the unit's limit: {log}"
    );
}
