#!/usr/bin/env python3
"""A worker that makes N orphans exit at once and times how long PID 1 takes to reap them all.
usage: orphans.py N OUT_FILE. An intermediate child forks N grandchildren and exits, so they are
reparented to PID 1 of the namespace; they block on a pipe; closing its write end makes them all
exit together. Reaped = /proc/PID gone (a zombie keeps its /proc entry).

Besides the time to the last reap it writes:
- exited_s: when the last orphan had closed its files on its way out (a watcher process blocks on
  a pipe whose write end every orphan holds; EOF comes when the last one has run exit_files(), just
  before it becomes a zombie). It does not depend on PID 1 but for the CPU PID 1 takes from the
  exiting orphans: reap_s - exited_s is what the init adds after the last exit.
- init_cpu_ms / init_wakeups: CPU time (schedstat, ns precision) and context switches (voluntary
  + involuntary, all threads) of PID 1 between the wake-up and the last reap.
With ORPHANS_GO=PATH set, it writes PATH.ready once the orphans wait and goes on only once PATH
exists (so that a profiler can attach to PID 1 first); at most 30 s."""
import json
import os
import sys
import time

n, out = int(sys.argv[1]), sys.argv[2]


def init_stats():
    cpu_ns, switches = 0, 0
    for t in os.listdir("/proc/1/task"):
        try:
            with open(f"/proc/1/task/{t}/schedstat") as f:
                cpu_ns += int(f.read().split()[0])
            with open(f"/proc/1/task/{t}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                        switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return cpu_ns, switches


r, w = os.pipe()      # orphans block on r; closing w wakes them all
pr, pw = os.pipe()    # the intermediate sends the orphans' pids
dr, dw = os.pipe()    # every orphan holds dw: EOF on dr = the last one has closed its files
tr, tw = os.pipe()    # the watcher sends the time of that EOF
watcher = os.fork()
if watcher == 0:
    for fd in (r, w, pr, pw, dw, tr):
        os.close(fd)
    while os.read(dr, 1 << 16):
        pass
    os.write(tw, repr(time.monotonic()).encode())
    os._exit(0)
os.close(dr)
os.close(tw)
mid = os.fork()
if mid == 0:
    os.close(pr)
    os.close(tr)
    pids = []
    for _ in range(n):
        c = os.fork()
        if c == 0:
            os.close(w)
            os.close(pw)
            os.read(r, 1)
            os._exit(0)
        pids.append(c)
    os.write(pw, (" ".join(map(str, pids)) + "\n").encode())
    os._exit(0)
os.close(pw)
os.close(r)
os.close(dw)
data = b""
while not data.endswith(b"\n"):
    chunk = os.read(pr, 1 << 20)
    if not chunk:
        break
    data += chunk
os.waitpid(mid, 0)
pids = set(int(p) for p in data.split())
time.sleep(0.2)  # let the reparenting settle
go = os.environ.get("ORPHANS_GO")
if go:  # a profiler attaches to PID 1 now: wait for its go (bounded)
    open(go + ".ready", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
c0, s0 = init_stats()
t0 = time.monotonic()
os.close(w)  # every orphan wakes up and exits
left = set(pids)
deadline = t0 + 30
while left and time.monotonic() < deadline:
    left = {p for p in left if os.path.exists(f"/proc/{p}")}
t1 = time.monotonic()
c1, s1 = init_stats()
exited = os.read(tr, 64)
os.waitpid(watcher, 0)
with open(out, "w") as f:
    json.dump({"orphans": len(pids), "reap_s": t1 - t0, "left": len(left),
               "exited_s": float(exited) - t0 if exited else None,
               "init_cpu_ms": (c1 - c0) / 1e6, "init_wakeups": s1 - s0}, f)
