#!/bin/bash
# How far the store's figures can move by writing less per message: the store bench
# (events/s, `full`, 256 writers) and the milter's CPU per message at 8 connections,
# on a build with bench/store-floor.patch, whose STORE_FLOOR switches leave parts of
# each message's writes out. Not the shipped build: the rows without event rows or
# queue-id index lose what the REST API, webhooks and the log follower read. They
# bound what any schema change of those tables could gain.
#
# Usage: bash bench/store-floor.sh [ROUNDS]   (3; alternating, median; ~5 min after
# a first build of ~5 min)
# Prints Markdown for BENCHMARKS.md. Builds in target/store-floor (~3 GB).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
# The commit the patch was made against (its src/store is main's as of this script).
base=${STORE_FLOOR_BASE:-d15a61b}
tmp=$(mktemp -d)
cleanup() { git -C "$repo" worktree remove --force "$tmp/src" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
git -C "$repo" worktree add -q --detach "$tmp/src" "$base"
git -C "$tmp/src" apply "$repo/bench/store-floor.patch"
mkdir -p "$repo/target/store-floor"
ln -s "$repo/target/store-floor" "$tmp/src/target"
cd "$tmp/src"
cargo build --offline --release --examples --bins -q
cargo bench --offline --no-run -q --bench store --bench milter 2>/dev/null

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

store_configs=(
  ""
  "no_counters"
  "no_items"
  "no_created_indexes"
  "no_created_indexes,no_rcpt_campaign_indexes"
  "queued_per_queue_id"
  "no_queued"
  "no_event_rows"
  "no_event_rows,no_queued,keep_journal"
)
declare -A rate
for r in $(seq "$rounds"); do
  for c in "${store_configs[@]}"; do
    v=$(STORE_FLOOR="$c" MSYS_BENCH_CASE=full/256 cargo bench --offline -q --bench store 2>/dev/null \
      | awk -F'|' '/^\| Full/ {gsub(/ /, "", $4); print $4}')
    rate[k$c]+="$v "
  done
done
echo "| STORE_FLOOR (what the build leaves out) | events committed/s (full, 256 writers; rounds) | median | vs shipped |"
echo "|---|---|---|---|"
shipped=$(echo ${rate[k]} | tr ' ' '\n' | median)
for c in "${store_configs[@]}"; do
  m=$(echo ${rate[k$c]} | tr ' ' '\n' | median)
  echo "| ${c:-nothing (as shipped)} | ${rate[k$c]}| $m | $(awk -v a="$m" -v b="$shipped" 'BEGIN {printf "%.2f", a / b}') |"
done

echo
milter_configs=(
  ""
  "durability_normal"
  "no_event_rows,no_queued,keep_journal"
  "no_event_rows,no_queued,keep_journal,durability_normal"
)
# Each run is 3 alternating rounds of the do-nothing milter, msys store off and msys
# store on; the configurations alternate too, ROUNDS times: the median of each column.
declare -A col
for r in $(seq "$rounds"); do
  for c in "${milter_configs[@]}"; do
    row=$(STORE_FLOOR="$c" BENCH_ONLY=protocol BENCH_CONCURRENCY=8 cargo bench --offline -q --bench milter 2>/dev/null \
      | grep '^| 8 |' | tail -1)
    for f in 4 5 6 7 8; do
      col[k$c.$f]+="$(echo "$row" | awk -F'|' -v f=$f '{gsub(/ /, "", $f); print $f}') "
    done
  done
done
echo "| STORE_FLOOR | do-nothing us/msg | msys store off us/msg | msys store on us/msg | store on vs do-nothing (runs) | median | store off vs do-nothing |"
echo "|---|---|---|---|---|---|---|"
for c in "${milter_configs[@]}"; do
  m() { echo ${col[k$c.$1]} | tr ' ' '\n' | median; }
  echo "| ${c:-nothing (as shipped)} | $(m 4) | $(m 5) | $(m 6) | ${col[k$c.8]}| $(m 8) | $(m 7) |"
done
