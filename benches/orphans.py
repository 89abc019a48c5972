#!/usr/bin/env python3
"""A worker that makes N orphans exit at once and times how long PID 1 takes to reap them all.
usage: orphans.py N OUT_FILE. An intermediate child forks N grandchildren and exits, so they are
reparented to PID 1 of the namespace; they block on a pipe; closing its write end makes them all
exit together. Reaped = /proc/PID gone (a zombie keeps its /proc entry)."""
import os, sys, time, json

n, out = int(sys.argv[1]), sys.argv[2]
r, w = os.pipe()
pr, pw = os.pipe()
mid = os.fork()
if mid == 0:
    os.close(pr)
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
data = b""
while not data.endswith(b"\n"):
    chunk = os.read(pr, 1 << 20)
    if not chunk:
        break
    data += chunk
os.waitpid(mid, 0)
pids = set(int(p) for p in data.split())
time.sleep(0.2)  # let the reparenting settle
t0 = time.monotonic()
os.close(w)  # every orphan wakes up and exits
left = set(pids)
deadline = t0 + 30
while left and time.monotonic() < deadline:
    left = {p for p in left if os.path.exists(f"/proc/{p}")}
t1 = time.monotonic()
with open(out, "w") as f:
    json.dump({"orphans": len(pids), "reap_s": t1 - t0, "left": len(left)}, f)
