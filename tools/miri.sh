#!/usr/bin/env bash
# Runs the library's unit tests that Miri can run under Miri, which checks the `unsafe` code
# they reach for undefined behaviour: out-of-bounds or dangling accesses, Stacked Borrows
# violations, uninitialised reads, data races, leaks.
#
#   tools/miri.sh [extra test-name filters...]
#
# By default it runs the modules whose unsafe code works on memory alone: the ring
# (`ring::`), the request encoding and its get slots (`request::`), coalescing
# (`coalesce::`), the index's key handling (`index::`), the frame codec (`log::format::`),
# the tickets and the pipeline's hand-offs (`ticket::`, `pipeline::handoff::`, `seq::`),
# the window's cut decision (`pipeline::window::`). Give filters to run others. Tests that
# map files, call the kernel through libc, or spawn many threads are marked
# `#[cfg_attr(miri, ignore)]` (Miri cannot map a file, and many threads take it hours);
# under `cfg(miri)` a few tests run smaller.
#
# Environment:
#   MIRI_TOOLCHAIN  toolchain with the miri component (default: nightly).
#   MIRIFLAGS       passed on; by default -Zmiri-disable-isolation (proptest reads the
#                   working directory and its regression files, and takes PROPTEST_CASES from
#                   the environment) and -Zmiri-permissive-provenance (parking_lot casts
#                   integers to pointers; mergelog's own such cast is an exposed one).
#   PROPTEST_CASES  cases per property test (default here: 4; Miri runs each slowly).
#
# Takes a few minutes on two cores, after a first build of the Miri sysroot
# (`cargo +nightly miri setup`). Not part of CI (.ci/run): too slow for its budget.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
toolchain=${MIRI_TOOLCHAIN:-nightly}
filters=("$@")
if [[ ${#filters[@]} -eq 0 ]]; then
    filters=(ring:: request:: coalesce:: index:: log::format:: ticket:: pipeline::handoff:: seq::
        pipeline::window::
        # Coalescing is safe code, and its tests of thousands of operations (sized to reach
        # the sort's thresholds) and its model tests (the regression seeds replayed each
        # time) take Miri tens of minutes: its other tests run.
        --skip coalesce::tests::matches_model
        --skip coalesce::tests::one_key_many_times_and_long_duplicates
        --skip coalesce::tests::skewed_keys_where_top_bits_do_not_split
        --skip coalesce::tests::window_big_enough_for_three_radix_digits
        # Safe code too, a CRC at every offset of damaged segments: fuzzed (`decode_frame`).
        --skip log::format::tests::decode_never_panics_on_damaged_segments)
fi
export MIRIFLAGS=${MIRIFLAGS:--Zmiri-disable-isolation -Zmiri-permissive-provenance}
export PROPTEST_CASES=${PROPTEST_CASES:-4}
# Its own target directory: Miri's builds share nothing with the ordinary ones.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/miri}

cd "$root"
cargo "+$toolchain" miri test --locked -p mergelog --lib -- "${filters[@]}"
