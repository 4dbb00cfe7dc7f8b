# Summarizes `perf sched timehist` for one process: per thread kind (the engine's threads by
# name, every unnamed thread as a writer), how often it was switched in, and per switch-in the
# mean time off the CPU before it (wait), from being woken to running (scheduling delay), and
# on the CPU (run).
#
#   perf sched record -o sched.data -- mergelog profile --writers 16 --depth 1 --duration 3
#   python3 session10-sched-summary.py sched.data PID   # PID: the mergelog process's
import sys, subprocess, re, collections
data, pid = sys.argv[1], sys.argv[2]
out = subprocess.run(['perf','sched','timehist','-i',data,'-p',pid], capture_output=True, text=True).stdout
kinds = collections.defaultdict(lambda: [0,0.0,0.0,0.0])
for line in out.splitlines():
    m = re.match(r'\s*([\d.]+)\s+\[(\d+)\]\s+(\S+)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)', line)
    if not m: continue
    comm = m.group(3)
    kind = 'writer' if comm == 'mergelog' else comm
    k = kinds[kind]; k[0]+=1; k[1]+=float(m.group(6)); k[2]+=float(m.group(7)); k[3]+=float(m.group(8))
for kind,(n,wait,delay,run) in sorted(kinds.items()):
    print(f"{kind:18s} sched-ins {n:7d}  mean wait {1000*wait/n:7.1f} us  mean sch delay {1000*delay/n:6.1f} us  mean run {1000*run/n:6.1f} us")
