#!/usr/bin/env python3
"""What any cleaning policy could do for issue 16's targets: a simulation of log cleaning.

docs/decisions.md ("Compaction, third look") uses it. Records are all the same size (one
unit); a workload writes `--writes` keys drawn from `--keys` keys (uniform or zipf THETA),
optionally coalesced per window of `--window` requests (only the last write of a key in a
window is logged, as mergelog's window does). Each policy keeps the log's frames near a
target and reports:

  wa    write amplification: (records written + records copied) / records written
  end   frames / live records at the end of the run
  peak  the most frames / live records seen after the first 10 % of the run (every 1,000
        writes, and at the end)

Policies:
  fifo R       mergelog's `Compaction::Auto` (src/compact.rs): when live / frames < R, take
               the oldest complete segments until the ratio passes R + (1 - R) / 8, copy
               their live records to the head, retire them. Only a prefix can go.
  greedy R     any segment may go (the one with the fewest live records first) while
               live / frames < R; copies go to a head of their own, apart from new writes
               (the segregation log-structured file systems use). Needs a format where a
               segment in the middle can be removed.
  greedyhead R the same choice of segments, but the copies go to the one head, among new
               writes, as mergelog's copies do (what choosing greedily alone would buy).
  inplace R    while live / frames < R, the complete segment with the fewest live records
               (with the segments after it while their live records fit one segment) is
               rewritten where it lies, keeping only its live records: nothing moves in
               the log's order, so no copy can land after a newer write of its key and
               cold records stay where they are. Needs segments that shrink and merge in
               place (frames of one file from several, the index's locations moved).
  gen H C      two logs: new writes go to a hot log kept at H * live records (its oldest
               segments are cleaned into a cold log); the cold log is cleaned as `fifo C`.
               Needs a second log and replay of cold before hot.

Only the standard library; a run of the defaults takes under a minute.
  python3 docs/cleaning_sim.py --dist zipf:0.99 --window 700
"""

import argparse
import bisect
import collections
import itertools
import random


def draw(keys, writes, dist, seed):
    rng = random.Random(seed)
    if dist == "uniform":
        return [rng.randrange(keys) for _ in range(writes)]
    theta = float(dist.split(":")[1])
    cum = list(itertools.accumulate(1.0 / (k + 1) ** theta for k in range(keys)))
    perm = list(range(keys))
    rng.shuffle(perm)
    total = cum[-1]
    return [perm[bisect.bisect(cum, rng.random() * total)] for _ in range(writes)]


def coalesce(stream, window):
    if window <= 1:
        return stream
    out = []
    for i in range(0, len(stream), window):
        out.extend(dict.fromkeys(stream[i : i + window]))
    return out


class Log:
    """Segments of `seg` records; `where[key]` is the (segment, slot) of its newest record."""

    def __init__(self, seg, where, first=0, stride=1):
        self.seg, self.where, self.stride = seg, where, stride
        self.segs = collections.OrderedDict()  # id -> list of keys; the last one is the head
        self.live = collections.Counter()  # id -> live records
        self.frames = 0
        self.next_id = first
        self.roll()

    def roll(self):
        self.head = self.next_id
        self.next_id += self.stride
        self.segs[self.head] = []

    def append(self, key, ids):
        old = self.where.get(key)
        if old is not None:
            ids[old[0]].live[old[0]] -= 1
        s = self.segs[self.head]
        self.where[key] = (self.head, len(s))
        ids[self.head] = self
        s.append(key)
        self.live[self.head] += 1
        self.frames += 1
        if len(s) >= self.seg:
            self.roll()

    def rewrite(self, sids, ids):
        """Rewrites the adjacent segments `sids` (in log order) as one, keeping only their
        live records where they are in the log's order; the records copied."""
        first = sids[0]
        kept = [key for sid in sids for slot, key in enumerate(self.segs[sid])
                if self.where.get(key) == (sid, slot)]
        for sid in sids:
            self.frames -= len(self.segs.pop(sid))
            del self.live[sid]
            del ids[sid]
        # OrderedDict: put the rewritten one back in its place (before every later id).
        later = [(i, self.segs.pop(i)) for i in list(self.segs) if i > first]
        self.segs[first] = kept
        for i, keys in later:
            self.segs[i] = keys
        for slot, key in enumerate(kept):
            self.where[key] = (first, slot)
        ids[first] = self
        self.live[first] = len(kept)
        self.frames += len(kept)
        return len(kept)

    def complete(self):
        return [i for i in self.segs if i != self.head]

    def remove(self, sid, ids, into):
        """Copies segment `sid`'s live records to `into`'s head, removes it; the copies."""
        copied = 0
        for slot, key in enumerate(self.segs[sid]):
            if self.where.get(key) == (sid, slot):
                into.append(key, ids)
                copied += 1
        self.frames -= len(self.segs.pop(sid))
        del self.live[sid]
        del ids[sid]
        return copied


def clean_prefix(log, live, ratio, ids):
    """mergelog's policy on `log` holding `live` live records: below `ratio`, the oldest
    complete segments until the ratio passes ratio + (1 - ratio) / 8, copied to its head.
    The records copied."""
    if not log.complete() or live / log.frames >= ratio:
        return 0
    target = ratio + (1 - ratio) / 8
    after, take = log.frames, []
    for sid in log.complete():
        take.append(sid)
        after -= len(log.segs[sid]) - log.live[sid]
        if live / after >= target:
            break
    return sum(log.remove(sid, ids, log) for sid in take)


def run(stream, seg, policy, args, check=1000):
    """One policy over the stream: (wa, end, peak). Logs of two heads number their
    segments apart (even and odd ids)."""
    where, ids = {}, {}
    live = written = copied = 0
    peak = 0.0
    ratio = args[-1]
    if policy == "gen":
        hot_max = args[0]
        hot, cold = Log(seg, where, 0, 2), Log(seg, where, 1, 2)
        logs = (hot, cold)
    elif policy == "greedy":
        log, head_c = Log(seg, where, 0, 2), Log(seg, where, 1, 2)
        logs = (log, head_c)
    else:
        log = Log(seg, where)
        logs = (log,)
    for i, key in enumerate(stream):
        if key not in where:
            live += 1
        (logs[0]).append(key, ids)
        written += 1
        if i % check:
            continue
        if policy == "fifo":
            copied += clean_prefix(log, live, ratio, ids)
        elif policy == "greedy":
            while live / sum(l.frames for l in logs) < ratio:
                cands = [(l.live[s] / len(l.segs[s]), s, l) for l in logs for s in l.complete()]
                if not cands:
                    break
                _, sid, owner = min(cands)
                copied += owner.remove(sid, ids, head_c)
        elif policy == "greedyhead":
            while live / log.frames < ratio:
                cands = [(log.live[s] / len(log.segs[s]), s) for s in log.complete()]
                if not cands:
                    break
                _, sid = min(cands)
                copied += log.remove(sid, ids, log)
        elif policy == "inplace":
            # Rewrite in place the complete segment with the lowest live ratio, with
            # its neighbours after it while their live records fit one segment.
            while live / log.frames < ratio:
                comp = log.complete()
                def u(s):
                    return log.live[s] / len(log.segs[s]) if log.segs[s] else 0
                if not comp:
                    break
                n = min(range(len(comp)), key=lambda n: u(comp[n]))
                if u(comp[n]) >= 0.98:
                    break
                take, fill = [comp[n]], log.live[comp[n]]
                for s in comp[n + 1:]:
                    if fill + log.live[s] > log.seg:
                        break
                    take.append(s)
                    fill += log.live[s]
                copied += log.rewrite(take, ids)
        else:
            while hot.frames > hot_max * live and hot.complete():
                copied += hot.remove(hot.complete()[0], ids, cold)
            copied += clean_prefix(cold, sum(cold.live.values()), ratio, ids)
        if i > len(stream) // 10:
            peak = max(peak, sum(l.frames for l in logs) / live)
    end = sum(l.frames for l in logs) / live
    return (written + copied) / written, end, max(peak, end)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--writes", type=int, default=2_000_000)
    p.add_argument("--dist", default="zipf:0.99")
    p.add_argument("--window", type=int, default=1, help="coalesce per window of N requests")
    p.add_argument("--seg", type=int, default=8_000, help="records per segment")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", default=None, help="run only this policy")
    a = p.parse_args()
    stream = coalesce(draw(a.keys, a.writes, a.dist, a.seed), a.window)
    print(f"{a.dist}, {a.keys} keys, {a.writes} writes, window {a.window}: "
          f"{len(stream)} logged ({len(stream) / a.writes:.3f}), segments of {a.seg}")
    print(f"{'policy':<16} {'wa':>6} {'end':>6} {'peak':>6}")
    configs = [("fifo", (r,)) for r in (0.45, 0.5, 0.55, 0.6)]
    configs += [("greedy", (r,)) for r in (0.5, 0.55, 0.6)]
    configs += [("greedyhead", (r,)) for r in (0.5, 0.55, 0.6)]
    configs += [("gen", (h, c)) for h in (0.5, 0.8) for c in (0.6, 0.7)]
    configs += [("inplace", (r,)) for r in (0.5, 0.55, 0.6, 0.65)]
    for policy, args in configs:
        if a.only and policy != a.only:
            continue
        wa, end, peak = run(stream, a.seg, policy, args)
        name = f"{policy} {' '.join(str(x) for x in args)}"
        print(f"{name:<16} {wa:6.3f} {end:6.3f} {peak:6.3f}", flush=True)


if __name__ == "__main__":
    main()
