#!/usr/bin/env bash
# Runs the library's unit tests that Miri can run under Miri, which checks the `unsafe` code
# they reach for undefined behaviour: out-of-bounds or dangling accesses, Stacked Borrows
# violations, uninitialised reads, data races, leaks.
#
#   tools/miri.sh [extra test-name filters...]
#
# By default it runs the modules with `unsafe` code that works on memory alone: the ring
# (`ring::`), the request encoding and its get slots (`request::`), the index's key handling
# (`index::`); and the lock-free hand-offs, whose races Miri's data-race detector and
# weak-memory emulation check and whose lost wake-ups it reports as deadlocks: the tickets
# (`ticket::`, futex sleeps), the pipeline's hand-offs (`pipeline::handoff::`), the batch
# map (`seq::`). Left out, as safe single-threaded code that reaches no `unsafe` of
# mergelog's (their property and every-bit tests took Miri over ten minutes): coalescing
# (`coalesce::`), the frame codec (`log::format::`), the window's cut decision
# (`pipeline::window::`); name them to run them. Give filters to run others. Tests that map
# files, call the kernel through libc, or spawn many threads are marked
# `#[cfg_attr(miri, ignore)]` (Miri cannot map a file, and many threads take it hours);
# under `cfg(miri)` many tests run smaller (fewer rounds, keys, ops, cases).
#
# Environment:
#   MIRI_TOOLCHAIN  toolchain with the miri component (default: nightly).
#   MIRIFLAGS       passed on; by default -Zmiri-disable-isolation (proptest reads the
#                   working directory and its regression files, and takes PROPTEST_CASES from
#                   the environment) and -Zmiri-permissive-provenance (parking_lot casts
#                   integers to pointers; mergelog's own such cast is an exposed one).
#   PROPTEST_CASES  cases per property test (default here: 4; Miri runs each slowly).
#
# Measured (docs/decisions.md, session 37): the default run's 57 tests take about 4 minutes
# (220 s; 3 min 48 s of wall time) on two cores shared with other builds, once the Miri
# sysroot (`cargo +nightly miri setup`, a few minutes) and the crate under Miri (about 3
# minutes) are built.
# Not part of CI (.ci/run): too slow for its budget.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
toolchain=${MIRI_TOOLCHAIN:-nightly}
filters=("$@")
if [[ ${#filters[@]} -eq 0 ]]; then
    filters=(ring:: request:: index:: ticket:: pipeline::handoff:: seq::)
fi
export MIRIFLAGS=${MIRIFLAGS:--Zmiri-disable-isolation -Zmiri-permissive-provenance}
export PROPTEST_CASES=${PROPTEST_CASES:-4}
# Its own target directory: Miri's builds share nothing with the ordinary ones.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/miri}

cd "$root"
cargo "+$toolchain" miri test --locked -p mergelog --lib -- "${filters[@]}"
