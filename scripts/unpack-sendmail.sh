#!/usr/bin/env bash
# A private Sendmail for the tests and benchmarks: Debian's sendmail packages conflict
# with postfix, so they are downloaded and unpacked (dpkg -x) under target/, never
# installed; m4 (for the .cf) and the libraries sendmail-bin needs are installed.
# Prints the directory they were unpacked in (the tests read it from
# MSYS_TEST_SENDMAIL_ROOT). Sendmail itself is only ever run by the tests, inside a
# loopback-only network namespace and a UTS namespace of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/target/sendmail-root"

missing=()
command -v m4 >/dev/null || missing+=(m4)
for lib in libwrap0 libdb5.3 liblockfile1 libnsl2 libsasl2-2; do
    dpkg -s "$lib" >/dev/null 2>&1 || missing+=("$lib")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "scripts/unpack-sendmail.sh: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$root/usr/libexec/sendmail/sendmail" ]; then
    debs="$PWD/target/sendmail-debs"
    rm -rf "$debs" "$root"
    mkdir -p "$debs" "$root"
    # apt's sandbox user must be able to write the download directory.
    chmod 777 "$debs"
    download() { (cd "$debs" && apt-get download -qq sendmail-bin sendmail-base sendmail-cf) >&2; }
    download || { apt-get update -qq >&2 && download; }
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$root"; done
fi
echo "$root"
