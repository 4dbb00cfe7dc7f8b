#!/usr/bin/env bash
# Runs one cargo-fuzz target of mergelog for a given time and keeps what it finds.
#
#   tools/fuzz.sh TARGET SECONDS [extra libFuzzer flags...]
#
# TARGET is `decode_frame`, `open_dir`, `side_files`, `follow_dir` (see fuzz/src/lib.rs),
# `raft_store` (fuzz/src/raft_store.rs) or `tools_dir` (fuzz/src/tools_dir.rs). The run uses one process
# (`-jobs=1` worth of CPU: the machine is shared), the committed seed corpus
# fuzz/corpus/TARGET (read only) plus a working corpus fuzz/work/TARGET (git-ignored, kept
# between runs), and writes crash/timeout/oom/leak inputs to fuzz/artifacts/TARGET/. Every
# such input is then copied into fuzz/regressions/TARGET/, which `cargo test --test
# fuzz_corpus` replays forever (`-p mergelog-raft --test fuzz_corpus` for raft_store,
# `-p mergelog-tools --test fuzz_corpus` for tools_dir). The summary line reports executions and findings.
#
# Environment:
#   FUZZ_KEEP_GOING=1  keep fuzzing after a crash (libFuzzer -fork=1 -ignore_crashes=1 ...),
#                      collecting every finding, instead of stopping at the first one.
#   FUZZ_TOOLCHAIN     toolchain for cargo-fuzz (default: nightly).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain. The targets are built
# with optimizations, debug assertions and overflow checks, and AddressSanitizer.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer flags...]" >&2
    echo "targets: decode_frame open_dir side_files follow_dir raft_store tools_dir" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2
if ! [[ $seconds =~ ^[0-9]+$ ]] || [[ $seconds -eq 0 ]]; then
    echo "SECONDS must be a positive integer, got '$seconds'" >&2
    exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
if [[ ! -f "$fuzz/fuzz_targets/$target.rs" ]]; then
    echo "no fuzz target '$target' (have: $(cd "$fuzz/fuzz_targets" && ls -- *.rs | sed 's/\.rs$//' | tr '\n' ' '))" >&2
    exit 2
fi
toolchain=${FUZZ_TOOLCHAIN:-nightly}
seeds="$fuzz/corpus/$target"
work="$fuzz/work/$target"
artifacts="$fuzz/artifacts/$target"
regressions="$fuzz/regressions/$target"
log="$fuzz/work/$target.log"
mkdir -p "$seeds" "$work" "$artifacts" "$regressions"

flags=(
    "-max_total_time=$seconds"
    "-timeout=60"
    "-rss_limit_mb=4096"
    "-max_len=4096"
    "-print_final_stats=1"
    "-artifact_prefix=$artifacts/"
)
if [[ -f "$fuzz/$target.dict" ]]; then
    flags+=("-dict=$fuzz/$target.dict")
fi
if [[ ${FUZZ_KEEP_GOING:-0} == 1 ]]; then
    flags+=("-fork=1" "-ignore_crashes=1" "-ignore_timeouts=1" "-ignore_ooms=1")
fi

# Artifacts already present before this run, so the summary counts only new ones.
before=$(find "$artifacts" -maxdepth 1 -type f | wc -l)

cd "$root"
set +e
cargo "+$toolchain" fuzz run --fuzz-dir "$fuzz" "$target" "$work" "$seeds" -- "${flags[@]}" "$@" 2>&1 |
    tee "$log"
status=${PIPESTATUS[0]}
set -e

# Keep every finding where the ordinary tests replay it.
copied=0
for f in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-* "$artifacts"/leak-*; do
    [[ -f $f ]] || continue
    dest="$regressions/$(basename "$f")"
    if [[ ! -f $dest ]]; then
        cp "$f" "$dest"
        copied=$((copied + 1))
    fi
done
after=$(find "$artifacts" -maxdepth 1 -type f | wc -l)

# Executions: libFuzzer's final stats (plain mode), or the last fork-mode status line
# ("#N: cov: ..."), whose N is the total over all jobs. (`|| true`: no match is no error.)
runs=$({ grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" || true; } | awk '{s += $2} END {print s + 0}')
if [[ $runs -eq 0 ]]; then
    runs=$({ grep -oE '^#[0-9]+: cov' "$log" || true; } | tail -n 1 | tr -dc '0-9')
    runs=${runs:-0}
fi
echo "fuzz.sh: target=$target seconds=$seconds executions=$runs new_artifacts=$((after - before)) copied_to_regressions=$copied exit=$status"
if [[ $copied -gt 0 || $((after - before)) -gt 0 ]]; then
    echo "fuzz.sh: findings in $regressions; replay with: cargo test --test fuzz_corpus" >&2
fi
exit "$status"
