#!/usr/bin/env python3
"""How the way a file was zero-filled changes how fast small writes into it sync.

Fills one file per chunk size with written zeros (in writes of that size, then fsync), then
times `pwrite` of RECORD bytes + `fdatasync` into each, appending, in blocks of BLOCK syncs
that alternate between the files (so the disk's drift falls on all of them alike). Prints
each file's median of its blocks' p50s and the median of its paired differences with the
first file. Two entries of `--chunks` are not chunk sizes but the ways of making a file
without writing its zeros: `fallocate` (`posix_fallocate`: unwritten extents, which a write
converts) and `grow` (an empty file, each write appending past its end).

    python3 tools/fill_sync_probe.py [--dir /var/tmp/fill-probe] [--size 64M]
        [--chunks 1M,256K,4K,2M,64M] [--record 176] [--block 300] [--rounds 12]

On the project's machine (Linux 6.18, ext4 on virtio, 2026-12-05) files filled by writes of
2 MiB or more synced 10-13 us slower per write than one filled by 1 MiB writes; 4 KiB,
256 KiB and 1 MiB chunks were level (docs/decisions.md, "The CPU a run counts starts at the
start line"). The engine fills its segments in 256 KiB writes (`dir::ZERO_CHUNK`).
`--chunks 256K,fallocate,grow --record 65536 --size 256M` (2026-12-07): the files not zero-filled synced
about twice as slowly (docs/decisions.md, "A new segment without its zeros").
"""

import argparse
import os
import statistics
import time


def size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    if s and s[-1] in units:
        return int(s[:-1]) * units[s[-1]]
    return int(s)


def fill(path, total, chunk):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if chunk == "fallocate":
        os.posix_fallocate(fd, 0, total)
        os.fsync(fd)
        return fd
    if chunk == "grow":
        os.fsync(fd)
        return fd
    zeros = b"\0" * min(chunk, total)
    left = total
    while left > 0:
        n = min(left, len(zeros))
        os.write(fd, zeros[:n])
        left -= n
    os.fsync(fd)
    return fd


def block(fd, off, total, record, n):
    buf = b"x" * record
    took = []
    for _ in range(n):
        if off + record > total:
            # Wrapping around rewrites written blocks: each file is sized for a whole run.
            off = 4096
        t = time.perf_counter_ns()
        os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        took.append(time.perf_counter_ns() - t)
        off += record
    return statistics.median(took) / 1000, off


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp/fill-probe")
    ap.add_argument("--size", type=size, default=64 << 20)
    ap.add_argument("--chunks", default="1M,256K,4K,2M,64M")
    ap.add_argument("--record", type=int, default=176)
    ap.add_argument("--block", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=12)
    a = ap.parse_args()
    chunks = [c.strip() for c in a.chunks.split(",") if c.strip()]
    if not chunks or a.record < 1 or a.block < 1 or a.rounds < 1 or a.size < 8192:
        ap.error("need at least one chunk, a record, a block, a round and a size of 8K or more")
    os.makedirs(a.dir, exist_ok=True)
    files = {}
    try:
        for c in chunks:
            path = os.path.join(a.dir, "filled-" + c)
            how = c if c in ("fallocate", "grow") else size(c)
            files[c] = [fill(path, a.size, how), 4096, path]
        p50s = {c: [] for c in chunks}
        for _ in range(a.rounds):
            for c in chunks:
                p50, files[c][1] = block(files[c][0], files[c][1], a.size, a.record, a.block)
                p50s[c].append(p50)
        first = p50s[chunks[0]]
        print(f"{a.record}-byte pwrite + fdatasync into {a.size >> 20} MiB files, "
              f"{a.rounds} alternated blocks of {a.block}")
        for c in chunks:
            diff = statistics.median(x - y for x, y in zip(p50s[c], first))
            how = c if c in ("fallocate", "grow") else f"filled in {c} writes"
            print(f"{how:>22}: p50 {statistics.median(p50s[c]):6.1f} us, "
                  f"{diff:+6.2f} us against {chunks[0]}")
    finally:
        for fd, _, path in files.values():
            os.close(fd)
            os.remove(path)


if __name__ == "__main__":
    main()
