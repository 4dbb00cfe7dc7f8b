#!/usr/bin/env python3
"""What compaction's copies would cost the writers if they did not go through the foreground
path: a stand-in experiment for issue 16 (docs/decisions.md, "Compaction: copies off the
foreground path").

Today a compaction's copies are encoded by the flusher and synced with the next window, so
they lengthen the writers' own path. A design that rewrites segments in place (or otherwise
writes copies on their own thread, into their own file, with their own syncs) moves them off
it. This script measures what that could buy before anyone builds it: it alternates, with
issue 16's flags,

  alone    `mergelog profile --system mergelog` (no compaction),
  stand-in the same, beside a thread of this script that writes RATE MB/s of "copies": it
           reads 256 KiB from a page-cached source file, takes its CRC (zlib's, a stand-in
           for the scan's checks), writes it into a preallocated 64 MiB file in circles and
           `fdatasync`s that file after every MiB,
  compact  `mergelog profile --system mergelog-compact` (copies through the flusher),

and prints each engine's puts/s and the two ratios to `alone` of the same round. The
stand-in leaves out what a real compactor would add (decoding the victim's frames, the
index's relocations, renames and directory syncs), so its ratio is an upper bound.

RATE: the copies' bytes per second. Issue 16's run logs about 83 bytes per put without
compaction and 157 with it (write amplification 1.9, the prefix policy at r = 0.6), so at
about 1.8 M puts/s the copies are about 135 MB/s; in-place cleaning's simulated 1.64
(docs/cleaning_sim.py) makes about 110 MB/s at 2 M puts/s.

  cargo build --release -p mergelog-tools
  python3 docs/copies_offpath.py --rate 110 --rounds 3 [--bin target/release/mergelog]
"""

import argparse
import os
import re
import subprocess
import tempfile
import threading
import time
import zlib

FLAGS = ("--keys 100000 --dist zipf:0.99 --segment-bytes 1M --batch-bytes-max 512K "
         "--ops 6000000 --compaction-ratio 0.6 --writers 4 --depth 256").split()
CHUNK = 256 << 10
FILE = 64 << 20


def copier(rate, d, stop):
    """Writes `rate` bytes/s of copies until `stop` is set (see the module's doc)."""
    src = os.open(os.path.join(d, "source"), os.O_RDWR | os.O_CREAT)
    dst = os.open(os.path.join(d, "copies"), os.O_RDWR | os.O_CREAT)
    for fd in (src, dst):
        if os.fstat(fd).st_size < FILE:
            for _ in range(FILE >> 20):
                os.write(fd, os.urandom(1 << 20))
            os.fsync(fd)
    off, sent, t0 = 0, 0, time.time()
    while not stop.is_set():
        buf = os.pread(src, CHUNK, off)
        zlib.crc32(buf)
        os.pwrite(dst, buf, off)
        off = (off + CHUNK) % FILE
        sent += CHUNK
        if off % (1 << 20) == 0:
            os.fdatasync(dst)
        ahead = sent / rate - (time.time() - t0)
        if ahead > 0:
            time.sleep(ahead)
    os.close(src)
    os.close(dst)


def puts_per_s(binary, system):
    out = subprocess.run([binary, "profile", "--system", system, *FLAGS],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"^[a-z-]+: ([0-9,]+) ops/s over", out, re.M)
    return int(m.group(1).replace(",", ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=110, help="copies in MB/s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bin", default="target/release/mergelog")
    a = p.parse_args()
    print(f"{'round':>5} {'alone':>10} {'stand-in':>10} {'compact':>10} "
          f"{'stand-in/alone':>15} {'compact/alone':>14}")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        for r in range(1, a.rounds + 1):
            alone = puts_per_s(a.bin, "mergelog")
            stop = threading.Event()
            t = threading.Thread(target=copier, args=(a.rate * 1e6, d, stop))
            t.start()
            time.sleep(0.5)
            beside = puts_per_s(a.bin, "mergelog")
            stop.set()
            t.join()
            compact = puts_per_s(a.bin, "mergelog-compact")
            print(f"{r:>5} {alone:>10,} {beside:>10,} {compact:>10,} "
                  f"{beside / alone:>14.3f}x {compact / alone:>13.3f}x", flush=True)


if __name__ == "__main__":
    main()
