#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in fuzz/ on the stable toolchain
# (cargo-fuzz with `-s none`: no sanitizer, so no nightly flag), two targets at a time.
# New inputs go to a temporary directory: the committed corpus stays as it is. A crash
# fails the run and leaves its input under target/fuzz-artifacts/<target>/ (keep it in
# fuzz/regressions/<target>/ once fixed). Usage: bash scripts/fuzz.sh [SECONDS per target]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libFuzzer is C++: it needs a C++ compiler.
command -v c++ >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
# -O: built as the daemon ships (release, no debug assertions). mail-parser's internal
# debug assertions fire on some hostile input; msys-milter catches that panic
# (mime::parse_message), but libFuzzer's panic hook would abort first.
(cd fuzz && cargo fuzz build -O -s none)
targets=$(cd fuzz && cargo fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts="$PWD/target/fuzz-artifacts"
export seconds work artifacts targets
run_one() {
    t=$1
    mkdir -p "$work/$t" "$artifacts/$t"
    dict=()
    [ -f "fuzz/dictionaries/$t.dict" ] && dict=("-dict=dictionaries/$t.dict")
    if (cd fuzz && cargo fuzz run -O -s none "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -artifact_prefix="$artifacts/$t/" -print_final_stats=1 \
        "${dict[@]}") >"$work/$t.log" 2>&1; then
        echo "fuzz $t: $(grep -E 'stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}') executions, $(grep -oE 'cov: [0-9]+' "$work/$t.log" | tail -1) in ${seconds}s, no crash"
    else
        echo "fuzz $t: FAILED" >&2
        tail -40 "$work/$t.log" >&2
        return 1
    fi
}
export -f run_one
# Inside a network namespace with only loopback, like the other tests.
unshare --net -- bash -c 'ip link set lo up && printf "%s\n" $targets | xargs -P 2 -I{} bash -c "run_one {}"'
