#!/usr/bin/env bash
# Runs every fuzz target (or those named after SECONDS) for SECONDS each, one after the
# other, on the stable toolchain, and prints a table: target, executions, executions per
# second, coverage (edges and features), corpus size, crashes. Exits non-zero when any
# target crashed; the crashing input is then in tests/fuzz/artifacts/<target>/, where
# `cargo test --test integration fuzz_replay` replays it (see tests/fuzz/README.md).
#
#   tests/fuzz/run.sh 600                 # 10 minutes per target
#   tests/fuzz/run.sh 60 csr h2_authority # two targets, a minute each
#
# Environment: FUZZ_TARGET_DIR (build directory; default target/fuzz of the repository),
# FUZZ_WORK (scratch corpus and logs; default a temporary directory, kept and printed).
# New inputs the fuzzer finds go to the scratch corpus, not to the committed seeds.
set -euo pipefail

secs=${1:-60}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target_dir=${FUZZ_TARGET_DIR:-$root/target/fuzz}
work=${FUZZ_WORK:-$(mktemp -d -t keycard-fuzz.XXXXXX)}
mkdir -p "$work"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz (about 3 minutes)..." >&2
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags; the stable compiler takes them with this set.
export RUSTC_BOOTSTRAP=1

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd "$here/fuzz_targets" && ls -- *.rs | sed 's/\.rs$//' | sort)
fi

cd "$root"
fuzz=(cargo fuzz)
common=(--fuzz-dir tests/fuzz --sanitizer none --target-dir "$target_dir")
echo "building ${#targets[@]} targets (log: $work/build.log)..." >&2
for t in "${targets[@]}"; do
    "${fuzz[@]}" build "${common[@]}" "$t" >>"$work/build.log" 2>&1 || {
        tail -30 "$work/build.log" >&2
        exit 2
    }
done

stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

rows=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "tests/fuzz/artifacts/$t"
    before=$(find "tests/fuzz/artifacts/$t" -type f ! -name .gitkeep | wc -l)
    log="$work/$t.log"
    echo "fuzzing $t for ${secs}s..." >&2
    rc=0
    "${fuzz[@]}" run "${common[@]}" "$t" "$work/corpus/$t" "tests/fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    after=$(find "tests/fuzz/artifacts/$t" -type f ! -name .gitkeep | wc -l)
    crashes=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="error (see $log)"
    fi
    [ "$rc" -ne 0 ] && failed=1
    execs=$(stat number_of_executed_units "$log")
    rate=$(stat average_exec_per_sec "$log")
    # The last status line: "#N DONE cov: E ft: F corp: C/S ..."
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\).*/\1 \/ \2/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    rows+=("| $t | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${corp:-?} | $crashes |")
done

echo "| target | execs | execs/s | cov edges / features | corpus (files/bytes) | crashes |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
echo "(${secs} s per target; logs and scratch corpus in $work)" >&2
exit "$failed"
