#!/usr/bin/env bash
# Build the Debian package, lint it, install it on this (throwaway, root) machine, check
# what it installed, run the installed daemon as its unit says behind a private
# Postfix and a private Sendmail (in a loopback-only network namespace), install it again
# (an upgrade) and remove it (state, configuration and user stay), purge it and check
# nothing is left.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test-package.sh: run as root (it installs and purges the package)" >&2
    exit 2
fi
command -v lintian >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null
bash scripts/package.sh
deb=$(ls target/debian/msys-milter_*.deb | head -1)
lintian --fail-on error "$deb"

dpkg --purge msys-milter >/dev/null 2>&1 || true
# A store left by something that ran the daemon as root outside the package would not
# be writable by the package's user: this machine is throwaway, start clean.
rm -rf /var/lib/msys-milter /var/log/msys-milter
dpkg -i "$deb"
fail() { echo "test-package: $*" >&2; dpkg --purge msys-milter >/dev/null 2>&1 || true; exit 1; }
[ -x /usr/sbin/msys-milter ] || fail "no /usr/sbin/msys-milter"
getent passwd msys-milter >/dev/null || fail "no msys-milter user"
getent group msys-milter >/dev/null || fail "no msys-milter group"
dpkg-query -W -f='${Conffiles}\n' msys-milter | grep -q ' */etc/msys-milter/msys-milter.toml ' || fail "the configuration is not a conffile"
[ "$(stat -c '%U:%G %a' /etc/msys-milter/msys-milter.toml)" = "root:msys-milter 640" ] || fail "config owner/mode: $(stat -c '%U:%G %a' /etc/msys-milter/msys-milter.toml)"
[ -d /var/lib/msys-milter ] || fail "no /var/lib/msys-milter"
for f in /usr/share/man/man8/msys-milter.8.gz /usr/share/man/man5/msys-milter.toml.5.gz \
         /usr/lib/systemd/system/msys-milter.service /usr/share/doc/msys-milter/README.Debian \
         /usr/share/doc/msys-milter/examples/sendmail/msys-milter.mc \
         /usr/share/doc/msys-milter/examples/sendmail/msys-milter-feedback.mc \
         /usr/share/doc/msys-milter/behaviour.md; do
    [ -f "$f" ] || fail "missing $f"
done
zcat /usr/share/man/man8/msys-milter.8.gz | grep -q 'dkim\\-keygen' || fail "msys-milter(8) lacks the subcommands"
[ -f /usr/share/man/man8/msys-milter-dkim-keygen.8.gz ] || fail "no page for the dkim-keygen subcommand"
/usr/sbin/msys-milter check-config /etc/msys-milter/msys-milter.toml
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /usr/lib/systemd/system/msys-milter.service
fi

# The installed daemon behind a private Postfix, then a private Sendmail (unpacked, never
# installed), inside the loopback-only namespace; one at a time (one installed port).
cargo build --tests --locked
MSYS_TEST_SENDMAIL_ROOT="$(bash scripts/unpack-sendmail.sh)"
export MSYS_TEST_SENDMAIL_ROOT
unshare --net -- sh -c 'ip link set lo up && exec cargo test --offline --locked --test package -- --include-ignored --test-threads=1' \
    || fail "the installed daemon did not pass mail"

# What the daemon committed survives an upgrade (the same package installed again) and a
# removal; so does an admin's edit of the configuration. Only a purge takes them.
store=/var/lib/msys-milter/msys-milter.db
[ -s "$store" ] || fail "the installed daemon left no store at $store"
echo "# edited by the admin" >> /etc/msys-milter/msys-milter.toml
before=$(md5sum "$store")
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$deb" >/dev/null
[ "$(md5sum "$store")" = "$before" ] || fail "the upgrade changed or took the store"
grep -q '^# edited by the admin$' /etc/msys-milter/msys-milter.toml || fail "the upgrade lost the admin's edit"
[ "$(stat -c '%U:%G %a' /etc/msys-milter/msys-milter.toml)" = "root:msys-milter 640" ] || fail "config owner/mode after upgrade: $(stat -c '%U:%G %a' /etc/msys-milter/msys-milter.toml)"
getent passwd msys-milter >/dev/null || fail "the upgrade removed the user"
dpkg --remove msys-milter >/dev/null
[ ! -e /usr/sbin/msys-milter ] || fail "/usr/sbin/msys-milter left after remove"
[ -f /etc/msys-milter/msys-milter.toml ] || fail "remove took the configuration (a conffile: only purge may)"
[ "$(md5sum "$store")" = "$before" ] || fail "remove changed or took the store (only purge may)"
getent passwd msys-milter >/dev/null || fail "remove took the user (only purge may)"

dpkg --purge msys-milter
for f in /usr/sbin/msys-milter /etc/msys-milter /var/lib/msys-milter /var/log/msys-milter \
         /usr/lib/systemd/system/msys-milter.service /usr/share/doc/msys-milter; do
    [ ! -e "$f" ] || { echo "test-package: $f left after purge" >&2; exit 1; }
done
! getent passwd msys-milter >/dev/null || { echo "test-package: user left after purge" >&2; exit 1; }
echo "test-package: OK ($deb)"
