#!/usr/bin/env bash
# The whole test suite: installs what it needs (Postfix, PostgreSQL, iproute2, ...), unpacks a
# private Sendmail, builds, then runs every test (unit, in-process, end-to-end through a
# private Postfix and a private Sendmail) inside a private network namespace that has
# only loopback, so no test can reach another host or a DNS server. Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: run as root (it installs packages and starts Postfix in a network namespace)" >&2
        exit 2
    fi
}

install_packages() {
    local missing=()
    [ -x /usr/sbin/postfix ] || missing+=(postfix)
    command -v ip >/dev/null || missing+=(iproute2)
    # The independent DKIM verifier of the signing tests.
    /usr/bin/python3 -c 'import dkim' 2>/dev/null || missing+=(python3-dkim)
    command -v unshare >/dev/null || missing+=(util-linux)
    # Several hosts share a PostgreSQL: the tests run private throwaway clusters.
    [ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
    # The REST API tests make a throwaway CA; node-sparkpost is one of its real clients.
    command -v openssl >/dev/null || missing+=(openssl)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    # The tests signal the daemon with kill(1).
    [ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
    [ ${#missing[@]} -eq 0 ] && return
    need_root
    echo "scripts/test.sh: installing ${missing[*]}"
    # No system instance is configured ("No configuration"), so nothing listens on port 25.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # A package install may start the system instance; the tests run private ones.
    if [ -f /etc/postfix/main.cf ]; then postfix stop >/dev/null 2>&1 || true; fi
    # Nor is the system's own PostgreSQL cluster used.
    if command -v pg_ctlcluster >/dev/null; then pg_ctlcluster 15 main stop >/dev/null 2>&1 || true; fi
}

install_packages
need_root
# Sendmail for the scenarios run under Sendmail too (unpacked, never installed).
MSYS_TEST_SENDMAIL_ROOT="$(bash scripts/unpack-sendmail.sh)"
export MSYS_TEST_SENDMAIL_ROOT
# Build and fetch everything outside the namespace (it has no network): crates, and
# django-anymail (the real webhook consumer of the event tests) in a throwaway venv.
cargo build --all-targets --locked
bash tests/anymail/setup-venv.sh "$PWD/target/anymail-venv"
export MSYS_TEST_ANYMAIL_PYTHON="$PWD/target/anymail-venv/bin/python"
# SparkPost's own client libraries (python-sparkpost, node-sparkpost) for the REST API tests.
bash tests/sparkpost/setup.sh "$PWD/target/sparkpost-clients"
export MSYS_TEST_SPARKPOST_CLIENTS="$PWD/target/sparkpost-clients"
# Inside: only loopback. Postfix resolves its own host name at start-up; here it can't
# leak a query off the machine.
exec unshare --net -- sh -c 'ip link set lo up && exec cargo test --offline --locked "$@" -- --test-threads=4' sh "$@"
