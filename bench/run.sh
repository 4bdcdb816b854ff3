#!/usr/bin/env bash
# Runs every benchmark and writes BENCHMARKS.md. Needs root (Postfix in a private
# network namespace) and Postfix installed (bash scripts/test.sh installs it).
# Usage: bash bench/run.sh            (long: the Postfix throughput table alone takes
#                                      about 20 minutes on 2 cores)
#        BENCH_MESSAGES=1000 bash bench/run.sh   (a quicker, noisier run)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
# OpenDKIM, the baseline of the signing benchmark (its service is not started: the
# benchmark runs its own instance).
[ -x /usr/sbin/opendkim ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends opendkim >/dev/null
# PostgreSQL for several hosts (the benchmark runs its own throwaway cluster).
[ -x /usr/lib/postgresql/15/bin/initdb ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
# Sendmail, unpacked from Debian's packages (never installed; they conflict with postfix).
MSYS_TEST_SENDMAIL_ROOT="$(bash scripts/unpack-sendmail.sh)"
export MSYS_TEST_SENDMAIL_ROOT
cargo build --release --examples --locked
cargo bench --no-run --locked
out=$(mktemp)
{
    echo "# Benchmarks"
    echo
    echo "Measured $(date -u +%Y-%m-%d) by \`bash bench/run.sh\` on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo),"
    echo "$(/usr/sbin/postconf -d mail_version 2>/dev/null | sed 's/mail_version = /Postfix /'), $(rustc --version | cut -d' ' -f1-2), release build."
    echo "The machine is shared and noisy: every comparison runs side by side in alternating rounds, and the ratios are what to read."
    echo
    cargo bench --locked --bench milter 2>/dev/null
    echo
    cargo bench --locked --bench rewrite 2>/dev/null
    echo
    cargo bench --locked --bench http 2>/dev/null
    echo
    cargo bench --locked --bench store 2>/dev/null
    echo
    cargo bench --locked --bench feedback 2>/dev/null
    echo
    cargo bench --locked --bench shared 2>/dev/null
    echo
    # The REST API over 1,000,000 entries and MSYS_BENCH_EVENTS events (default 2,000,000;
    # about 3 minutes and 2.3 GB under target/).
    cargo bench --locked --bench api 2>/dev/null
    echo
    # The MTA runs in a network namespace that has only loopback.
    unshare --net -- sh -c 'ip link set lo up && exec cargo bench --offline --locked --bench postfix' 2>/dev/null
    echo
    unshare --net -- sh -c 'ip link set lo up && exec cargo bench --offline --locked --bench sendmail' 2>/dev/null
    cat bench/notes.md
} | tee "$out"
# The run this one replaces joins the earlier ones in bench/history.md, newest first
# (its headings one level down), so no row is ever lost.
if [ -f BENCHMARKS.md ] && grep -q '^## Earlier runs, kept as they were written$' BENCHMARKS.md; then
    prev_date=$(sed -n 's/^Measured \([0-9-]*\) by.*/\1/p' BENCHMARKS.md | head -1)
    hist=$(mktemp)
    {
        sed -n '1,/^### /{/^### /!p}' bench/history.md
        echo "### Benchmarks of ${prev_date:-an earlier run}"
        sed -e '/^## Earlier runs, kept as they were written$/,$d' -e '1d' -e 's/^### /#### /' BENCHMARKS.md
        sed -n '/^### /,$p' bench/history.md
    } >"$hist"
    mv "$hist" bench/history.md
fi
# Earlier runs and experiments, kept whole below this one.
{
    echo
    cat bench/history.md
} >>"$out"
mv "$out" BENCHMARKS.md
echo "wrote BENCHMARKS.md"
