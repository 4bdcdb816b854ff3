#!/usr/bin/env bash
# One command to see msys-milter work: a private Postfix (loopback only, in its own
# network namespace) with msys-milter and a capture server standing in for the
# Internet; SparkPost's documented X-MSYS-API example (with cc, bcc and archive) is
# sent, and what each recipient received is printed. Everything stops afterwards.
# Needs root (Postfix, the namespace); installs Postfix when missing, as the tests do.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (it starts a private Postfix in a network namespace)" >&2
    exit 2
fi
if [ ! -x /usr/sbin/postfix ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix iproute2 >/dev/null
fi
cargo build --tests --locked -q
unshare --net -- sh -c 'ip link set lo up && exec cargo test --offline --locked -q --test demo -- --nocapture' \
    | grep -v '^running\|^test result\|^$' || true
