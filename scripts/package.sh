#!/usr/bin/env bash
# Build the Debian package: target/debian/msys-milter_<version>-1_<arch>.deb.
# Needs cargo-deb (`cargo install cargo-deb`; installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked
rm -rf target/man && mkdir -p target/man
# msys-milter(8) and its subcommands' pages are generated from the command's own
# options, so they never drift.
target/release/msys-milter manpage --out-dir target/man
cp packaging/man/msys-milter.toml.5 target/man/
gzip -9n target/man/*.8 target/man/msys-milter.toml.5
cargo deb --no-build --locked --strip "$@"
ls target/debian/*.deb
