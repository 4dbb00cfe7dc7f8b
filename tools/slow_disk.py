#!/usr/bin/env python3
"""Keeps a disk slow, as another tenant would: 4 threads each write 256 KiB and fdatasync it,
in a loop, into files of 64 MiB under DIR, until killed.

The slow-disk figures in README.md and docs/decisions.md ("What limits 4 x 256", "Several
syncs in flight") were measured beside it, with DIR on the same disk as the benchmark:

    python3 tools/slow_disk.py /var/tmp/slow-disk &
    mergelog bench --systems mergelog,wal,mergelog-syncers --writers 4 --depth 256 --rounds 5
    kill %1; rm -r /var/tmp/slow-disk

The bench's sync probe shows the effect (p50 420-750 us here against 100-160 us quiet).
"""
import os
import sys
import threading

THREADS = 4
WRITE = 256 << 10
FILE = 64 << 20


def loop(path, buf):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    off = 0
    while True:
        os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        off = (off + len(buf)) % FILE


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "slow-disk"
    os.makedirs(d, exist_ok=True)
    buf = os.urandom(WRITE)
    for i in range(THREADS):
        threading.Thread(target=loop, args=(f"{d}/f{i}", buf), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
